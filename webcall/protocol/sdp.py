"""SDP offer/answer for an ICE-lite, BUNDLE-only SFU — pure functions, no I/O.

The official SDK sends one offer per stream and never renegotiates, so the answer must be right the first
time: same m-line order, the offer's mids, our ICE credentials and candidates inline, `a=setup:passive`,
rtcp-mux, and only codecs the offer contains. Parsing reuses aiortc's SDP parser; answers are written here
so that every line is under our control.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field

from aiortc.sdp import MediaDescription, SessionDescription

# Header extensions the server accepts from a publisher. transport-cc is left out on purpose: accepting it
# would make the browser expect transport-wide feedback and ignore REMB.
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_VIDEO_ORIENTATION = "urn:3gpp:video-orientation"
EXT_TOFFSET = "urn:ietf:params:rtp-hdrext:toffset"
EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"

PUBLISH_EXTENSIONS = frozenset({EXT_AUDIO_LEVEL, EXT_ABS_SEND_TIME, EXT_VIDEO_ORIENTATION, EXT_TOFFSET, EXT_MID})
# What a player gets: values that stay meaningful after forwarding (the mid is rewritten per player).
PLAY_EXTENSIONS = frozenset({EXT_AUDIO_LEVEL, EXT_VIDEO_ORIENTATION, EXT_TOFFSET, EXT_MID})

SUPPORTED_VIDEO = ("VP8", "H264")
SUPPORTED_AUDIO = ("opus",)


# The certificate digests a DTLS fingerprint may use (RFC 8827 §6.5: WebRTC requires sha-256; sha-1 and md5 are
# too weak to stop a man in the middle). An offer with none of them is refused before any answer.
FINGERPRINT_ALGORITHMS = ("sha-256", "sha-384", "sha-512")


class SdpError(ValueError):
    """The offer cannot be used; `info` is what the client is told."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


@dataclass(frozen=True, slots=True)
class Codec:
    name: str  # "VP8", "H264", "opus"
    payload_type: int
    clock_rate: int
    channels: int | None
    fmtp: str  # as offered, kept verbatim so the browser's own parameters come back unchanged
    rtcp_fb: tuple[str, ...]  # "nack", "nack pli", "ccm fir", "goog-remb"
    rtx_payload_type: int | None = None

    @property
    def params(self) -> dict[str, str]:
        return parse_fmtp(self.fmtp)


@dataclass(slots=True)
class Track:
    """One accepted m-line: what flows in it and how it is labelled on the wire."""

    mid: str
    kind: str  # "audio" | "video"
    codec: Codec
    extensions: dict[str, int]  # uri -> id, as the offer numbered them
    ssrc: int | None = None  # the offerer's SSRCs (publishers announce them; players don't)
    rtx_ssrc: int | None = None


@dataclass(slots=True)
class MLine:
    """An m-line of the offer and what the answer does with it (track None = rejected)."""

    mid: str
    kind: str
    profile: str
    formats: list[str]
    track: Track | None = None
    rtcp_rsize: bool = False


@dataclass(slots=True)
class Negotiation:
    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]  # (algorithm, value)
    mlines: list[MLine] = field(default_factory=list)
    bundle: bool = True  # the offer had a BUNDLE group (the answer has one only then: RFC 8843 §7.3)

    @property
    def tracks(self) -> list[Track]:
        return [m.track for m in self.mlines if m.track is not None]

    def track(self, kind: str) -> Track | None:
        return next((t for t in self.tracks if t.kind == kind), None)


@dataclass(frozen=True, slots=True)
class LocalEndpoint:
    """What the server puts in every answer."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: tuple[str, str]  # ("sha-256", "AB:CD:...")
    candidates: tuple[tuple[str, int], ...]  # (ip, port) UDP host candidates, best first
    tcp_candidates: tuple[tuple[str, int], ...] = ()  # (ip, port) ICE-TCP passive host candidates (RFC 6544)


def parse_fmtp(fmtp: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in fmtp.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            params[key.strip().lower()] = value.strip()
    return params


def _parse(offer: str) -> SessionDescription:
    if not isinstance(offer, str) or not offer.startswith("v=0"):
        raise SdpError("Bad SDP: not a session description")
    try:
        return SessionDescription.parse(offer)
    except Exception:  # aiortc's parser asserts and raises freely on bad input, without saying where
        raise SdpError(f"Bad SDP: {_where_unparsable(offer)}") from None


_LINE = re.compile(r"[a-z]=")


def _where_unparsable(offer: str) -> str:
    """Where an offer that aiortc's parser refused goes wrong, for the client's info string (our parser's
    exception names mean nothing to a client): the first line that is not `<type>=<value>`, else the first
    section (session part, then each m= section in turn) that cannot be parsed with those before it."""
    lines = offer.splitlines()
    for number, line in enumerate(lines, 1):
        if line and not _LINE.match(line):
            return f"line {number} is not <type>=<value>"
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")] + [len(lines)]
    for index, end in enumerate(starts):
        try:
            SessionDescription.parse("\r\n".join(lines[:end]) + "\r\n")
        except Exception:
            if index == 0:
                return "the session-level lines cannot be parsed"
            return f"m-line {index} ({lines[starts[index - 1]][2:].split(' ', 1)[0]}) cannot be parsed"
    return "cannot be parsed"


def _codecs(media: MediaDescription) -> list[Codec]:
    """The offer's codecs in preference order, each with its RTX payload type attached."""
    rtx_for: dict[int, int] = {}
    for c in media.rtp.codecs:
        if c.mimeType.lower().endswith("/rtx") and "apt" in c.parameters:
            try:
                rtx_for[int(c.parameters["apt"])] = c.payloadType
            except (TypeError, ValueError):
                pass
    out = []
    for c in media.rtp.codecs:
        name = c.mimeType.split("/", 1)[1]
        fmtp = ";".join(k if v is None else f"{k}={v}" for k, v in c.parameters.items())
        fb = tuple(f.type + (f" {f.parameter}" if f.parameter else "") for f in c.rtcpFeedback)
        out.append(Codec(name, c.payloadType, c.clockRate, c.channels, fmtp, fb, rtx_for.get(c.payloadType)))
    return out


def _h264_rank(codec: Codec) -> int | None:
    """Lower is better; None = unusable (packetization-mode 0 would need single-NAL-only forwarding)."""
    params = codec.params
    if params.get("packetization-mode", "0") != "1":
        return None
    profile = params.get("profile-level-id", "42001f").lower()[:4]
    return {"42e0": 0, "4200": 1, "4d00": 2, "6400": 3}.get(profile, 4)


def _pick_publish_codec(kind: str, offered: list[Codec], video_prefs: tuple[str, ...]) -> Codec | None:
    if kind == "audio":
        return next((c for c in offered if c.name.lower() == "opus" and c.clock_rate == 48000), None)
    for want in video_prefs:
        candidates = [c for c in offered if c.name.upper() == want.upper()]
        if want.upper() == "H264":
            ranked = sorted((r, i, c) for i, c in enumerate(candidates) if (r := _h264_rank(c)) is not None)
            candidates = [c for _, _, c in ranked]
        if candidates:
            return candidates[0]
    return None


def _pick_play_codec(source: Codec, offered: list[Codec]) -> Codec | None:
    """The player's payload type that can carry the publisher's bitstream unchanged."""
    same = [c for c in offered if c.name.lower() == source.name.lower() and c.clock_rate == source.clock_rate]
    if source.name.upper() != "H264":
        return same[0] if same else None
    src_profile = source.params.get("profile-level-id", "42001f").lower()
    usable = [c for c in same if c.params.get("packetization-mode", "0") == "1"]

    def rank(c: Codec) -> int:
        p = c.params.get("profile-level-id", "42001f").lower()
        if p[:4] == src_profile[:4]:
            return 0
        if p[:2] == src_profile[:2]:  # same profile_idc, other constraint flags (42e0 vs 4200)
            return 1
        return 2

    usable = [c for c in usable if rank(c) < 2]
    return min(usable, key=rank) if usable else None


def _ssrcs(media: MediaDescription) -> tuple[int | None, int | None]:
    for group in media.ssrc_group:
        if group.semantic == "FID" and len(group.items) >= 2:
            return int(group.items[0]), int(group.items[1])
    return (media.ssrc[0].ssrc if media.ssrc else None), None


NO_BUNDLE = ("Offer without BUNDLE: all media must share one transport "
             "(bundlePolicy max-bundle or balanced; GStreamer's webrtcbin: max-bundle or max-compat)")


def _negotiate(offer_sdp: str, choose) -> Negotiation:
    """Walk the offer's m-lines; `choose` decides each usable audio/video section's track.

    A section is usable if it has a port, or is `a=bundle-only` (port 0, RFC 8843 §6) inside the BUNDLE group:
    GStreamer's and libwebrtc's max-bundle offers send every section but the first that way. With a BUNDLE
    group, a section outside it is rejected (it would need a transport of its own). Without one, a single
    section works (the answer has no group either); several fail with NO_BUNDLE: this server has one
    transport per stream, and accepting only part of the media would fail silently.
    """
    offer = _parse(offer_sdp)
    if not offer.media:
        raise SdpError("Bad SDP: no media")
    sections = re.split(r"\r?\nm=", offer_sdp)[1:]  # per-m-line text, for attributes aiortc does not keep
    mids = [m.rtp.muxId if m.rtp.muxId is not None else str(i) for i, m in enumerate(offer.media)]
    bundle = next((list(g.items) for g in offer.group if g.semantic.upper() == "BUNDLE" and g.items), None)
    # ICE and DTLS parameters: the BUNDLE group's tagged (first) section's, else the first section's.
    first = offer.media[mids.index(bundle[0]) if bundle and bundle[0] in mids else 0]
    if first.ice is None or not first.ice.usernameFragment or not first.ice.password:
        raise SdpError("Bad SDP: missing ICE credentials")
    if first.dtls is None or not first.dtls.fingerprints:
        raise SdpError("Bad SDP: missing DTLS fingerprint")
    if not any(f.algorithm.lower() in FINGERPRINT_ALGORITHMS for f in first.dtls.fingerprints):
        raise SdpError("Bad SDP: no usable DTLS fingerprint (sha-256, sha-384 or sha-512)")
    neg = Negotiation(
        ice_ufrag=first.ice.usernameFragment,
        ice_pwd=first.ice.password,
        fingerprints=[(f.algorithm.lower(), f.value.upper()) for f in first.dtls.fingerprints],
        bundle=bundle is not None,
    )
    seen_mids: set[str] = set()
    for index, media in enumerate(offer.media):
        mid = mids[index]
        if mid in seen_mids:
            raise SdpError("Bad SDP: duplicate mid")
        seen_mids.add(mid)
        text = sections[index] if index < len(sections) else ""
        mline = MLine(mid, media.kind, media.profile, [str(f) for f in media.fmt])
        mline.rtcp_rsize = re.search(r"^a=rtcp-rsize\s*$", text, re.M) is not None
        bundle_only = re.search(r"^a=bundle-only\s*$", text, re.M) is not None
        in_bundle = bundle is None or mid in bundle
        if media.kind in ("audio", "video") and in_bundle and (media.port != 0 or (bundle_only and bundle)):
            mline.track = choose(media, mid, _codecs(media))
        neg.mlines.append(mline)
    if bundle is None and len(neg.tracks) > 1:
        raise SdpError(NO_BUNDLE)
    return neg


def _extensions(media: MediaDescription, allowed: frozenset[str]) -> dict[str, int]:
    return {e.uri: e.id for e in media.rtp.headerExtensions if e.uri in allowed}


def negotiate_publish(offer_sdp: str, video_prefs: tuple[str, ...] = SUPPORTED_VIDEO) -> Negotiation:
    """Accept what a publisher sends: Opus, and the first preferred video codec the offer has."""

    def choose(media: MediaDescription, mid: str, offered: list[Codec]) -> Track | None:
        if media.direction not in (None, "sendonly", "sendrecv"):
            return None
        codec = _pick_publish_codec(media.kind, offered, video_prefs)
        if codec is None:
            return None
        ssrc, rtx_ssrc = _ssrcs(media)
        return Track(mid, media.kind, codec, _extensions(media, PUBLISH_EXTENSIONS), ssrc, rtx_ssrc)

    neg = _negotiate(offer_sdp, choose)
    if not neg.tracks:
        raise SdpError("No common codecs")
    return neg


def negotiate_play(offer_sdp: str, sources: dict[str, Codec]) -> Negotiation:
    """Match each of the player's m-lines with the publisher's track of that kind, by codec."""
    wanted_kinds: set[str] = set()

    def choose(media: MediaDescription, mid: str, offered: list[Codec]) -> Track | None:
        if media.direction not in (None, "recvonly", "sendrecv"):
            return None
        source = sources.get(media.kind)
        if source is None:
            return None
        wanted_kinds.add(media.kind)
        if media.kind in {t.kind for t in tracks_so_far}:
            return None  # one track per kind: a second video m-line has nothing to carry
        codec = _pick_play_codec(source, offered)
        if codec is None:
            return None
        track = Track(mid, media.kind, codec, _extensions(media, PLAY_EXTENSIONS))
        tracks_so_far.append(track)
        return track

    tracks_so_far: list[Track] = []
    neg = _negotiate(offer_sdp, choose)
    if not neg.tracks:
        raise SdpError("No common codecs")
    return neg


_FB_PUBLISH = ("nack", "nack pli", "ccm fir", "goog-remb")
_FB_PLAY = ("nack", "nack pli", "ccm fir")


def candidate_lines(local: LocalEndpoint) -> list[str]:
    """Host candidates: UDP first, then ICE-TCP passive ones at a lower priority, so a client that can use both
    prefers UDP. Priorities per RFC 8445 §5.1.2.1 (type preference 126 for host); a TCP candidate's local
    preference follows RFC 6544 §4.2 (direction preference 4 of 6 for passive, shifted left 13 bits)."""
    lines = []
    for index, (cip, cport) in enumerate(local.candidates):
        prio = (126 << 24) | ((65535 - index) << 8) | 255
        lines.append(f"a=candidate:{index + 1} 1 udp {prio} {cip} {cport} typ host")
    for index, (cip, cport) in enumerate(local.tcp_candidates):
        prio = (126 << 24) | (((4 << 13) + 8191 - index) << 8) | 255
        lines.append(f"a=candidate:{len(local.candidates) + index + 1} 1 tcp {prio} {cip} {cport} typ host "
                     "tcptype passive")
    return lines


def build_answer(
    neg: Negotiation,
    local: LocalEndpoint,
    *,
    direction: str,  # "recvonly" for a publisher, "sendonly" for a player
    session_id: int,
    ssrcs: dict[str, tuple[int, int | None]] | None = None,  # mid -> (ssrc, rtx ssrc) we send with
    cname: str = "webcall",
    stream_label: str = "webcall",
) -> str:
    ip, port = (local.candidates or local.tcp_candidates)[0]
    accepted = [m.mid for m in neg.mlines if m.track is not None]
    feedback = _FB_PUBLISH if direction == "recvonly" else _FB_PLAY
    lines = [
        "v=0",
        f"o=webcall {session_id} 1 IN IP4 {ip}",
        "s=webcall",
        "t=0 0",
        "a=ice-lite",
        *(["a=group:BUNDLE " + " ".join(accepted)] if neg.bundle else []),
        "a=msid-semantic: WMS " + stream_label,
    ]
    transport = [f"a=ice-ufrag:{local.ice_ufrag}", f"a=ice-pwd:{local.ice_pwd}",
                 f"a=fingerprint:{local.fingerprint[0]} {local.fingerprint[1]}", "a=setup:passive"]
    for m in neg.mlines:
        t = m.track
        if t is None:
            # Rejected: port 0, one of the offered formats, outside the bundle. The ICE/DTLS lines are there for
            # GStreamer's webrtcbin, which checks ice-ufrag, ice-pwd, setup and a fingerprint in every section.
            lines += [f"m={m.kind} 0 {m.profile} {m.formats[0] if m.formats else '0'}", f"c=IN IP4 {ip}",
                      *transport, f"a=mid:{m.mid}", "a=inactive"]
            continue
        c = t.codec
        pts = [c.payload_type] + ([c.rtx_payload_type] if c.rtx_payload_type is not None else [])
        lines += [f"m={m.kind} {port} {m.profile} {' '.join(map(str, pts))}", f"c=IN IP4 {ip}",
                  f"a=rtcp:{port} IN IP4 {ip}"]
        lines += candidate_lines(local)
        lines += ["a=end-of-candidates", *transport, f"a=mid:{m.mid}"]
        for uri, ext_id in sorted(t.extensions.items(), key=lambda kv: kv[1]):
            lines.append(f"a=extmap:{ext_id} {uri}")
        lines.append(f"a={direction}")
        if direction == "sendonly":
            lines.append(f"a=msid:{stream_label} {stream_label}-{m.kind}")
        lines.append("a=rtcp-mux")
        if m.rtcp_rsize:
            lines.append("a=rtcp-rsize")
        channels = f"/{c.channels}" if c.channels and c.channels > 1 else ""
        lines.append(f"a=rtpmap:{c.payload_type} {c.name}/{c.clock_rate}{channels}")
        lines += [f"a=rtcp-fb:{c.payload_type} {fb}" for fb in c.rtcp_fb if fb in feedback]
        if c.fmtp:
            lines.append(f"a=fmtp:{c.payload_type} {c.fmtp}")
        if c.rtx_payload_type is not None:
            lines += [f"a=rtpmap:{c.rtx_payload_type} rtx/{c.clock_rate}",
                      f"a=fmtp:{c.rtx_payload_type} apt={c.payload_type}"]
        if ssrcs and m.mid in ssrcs:
            ssrc, rtx_ssrc = ssrcs[m.mid]
            if rtx_ssrc is not None and c.rtx_payload_type is not None:
                lines.append(f"a=ssrc-group:FID {ssrc} {rtx_ssrc}")
                group = (ssrc, rtx_ssrc)
            else:
                group = (ssrc,)
            for s in group:
                lines += [f"a=ssrc:{s} cname:{cname}", f"a=ssrc:{s} msid:{stream_label} {stream_label}-{m.kind}"]
    return "\r\n".join(lines) + "\r\n"
