"""Offer rewrites that make an aiortc offer look like another stack's."""

from __future__ import annotations

import re


def split_sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    media: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def join_sections(session: list[str], media: list[list[str]]) -> str:
    return "\r\n".join(session + [line for section in media for line in section]) + "\r\n"


def max_bundle(sdp: str) -> str:
    """What GStreamer webrtcbin (bundle-policy max-bundle) and libwebrtc (max-bundle) write: every m-section
    after the first has port 0, `a=bundle-only` and no candidates (RFC 8843 §6), all stay in the BUNDLE group."""
    session, media = split_sections(sdp)
    for section in media[1:]:
        parts = section[0].split(" ")
        parts[1] = "0"
        section[0] = " ".join(parts)
        section[:] = [line for line in section
                      if not line.startswith(("a=candidate", "a=end-of-candidates", "c="))]
        section.insert(1, "c=IN IP4 0.0.0.0")
        mid_at = next(i for i, line in enumerate(section) if line.startswith("a=mid:"))
        section.insert(mid_at + 1, "a=bundle-only")
    return join_sections(session, media)


def without_bundle(sdp: str) -> str:
    """The offer with no BUNDLE group (bundlePolicy negotiate without bundling)."""
    return re.sub(r"^a=group:BUNDLE[^\r\n]*\r?\n", "", sdp, flags=re.M)
