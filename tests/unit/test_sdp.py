"""SDP offer/answer (webcall/protocol/sdp.py), driven by the real Web SDK offers in tests/fixtures/captures.

Expected values are read from the offers with regular expressions written here, never through the
code under test. Answers are checked line by line, re-parsed with aiortc, and fed to a real aiortc
RTCPeerConnection as the answer to its own offer.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from tests.support import sdpmunge
from webcall.protocol.sdp import (
    EXT_ABS_SEND_TIME,
    EXT_MID,
    NO_BUNDLE,
    Codec,
    LocalEndpoint,
    Negotiation,
    SdpError,
    build_answer,
    negotiate_play,
    negotiate_publish,
)

_REPO = Path(__file__).resolve().parents[2]


def _capture_dir() -> Path:
    override = os.environ.get("WEBCALL_CAPTURES")
    return Path(override) if override else _REPO / "tests" / "fixtures" / "captures"


CAPTURE_DIR = _capture_dir()


def _load_offers() -> list[tuple[str, str, str]]:
    """(id, message, sdp) of every publishStream/playStream the SDK sent."""
    out = []
    for path in sorted(CAPTURE_DIR.glob("*.json")):
        capture = json.loads(path.read_text())
        for index, msg in enumerate(capture["messages"]):
            if msg.get("dir") == "c2s" and msg.get("message") in ("publishStream", "playStream"):
                sdp = msg["data"][0].get("sdp")
                if sdp:
                    out.append((f"{path.stem}#{index}", msg["message"], sdp))
    return out


OFFERS = _load_offers()
PUBLISH = [(i, s) for i, m, s in OFFERS if m == "publishStream"]
PLAY = [(i, s) for i, m, s in OFFERS if m == "playStream"]


def test_captures_present() -> None:
    """Never skip: without the captures everything below would test nothing."""
    assert OFFERS, f"no captured offers in {CAPTURE_DIR} (set WEBCALL_CAPTURES)"
    assert any(i.startswith("chromium") for i, _ in PUBLISH)
    assert any(i.startswith("firefox") for i, _ in PUBLISH)
    assert any(i.startswith("chromium") for i, _ in PLAY)
    assert any(i.startswith("firefox") for i, _ in PLAY)


def _params(pairs):
    return [pytest.param(sdp, id=ident) for ident, sdp in pairs] or [pytest.param("", id="no-captures")]


def _capture(stem: str, message: str) -> str:
    return next(s for i, m, s in OFFERS if i.startswith(stem + "#") and m == message)


CHROMIUM_PUBLISH = _capture("chromium-publish", "publishStream") if OFFERS else ""
FIREFOX_PUBLISH = _capture("firefox-publish", "publishStream") if OFFERS else ""
CHROMIUM_PLAY = _capture("chromium-play", "playStream") if OFFERS else ""
FIREFOX_PLAY = _capture("firefox-play", "playStream") if OFFERS else ""
CHROMIUM_PLAY_AUDIO = _capture("chromium-play-audio-only", "playStream") if OFFERS else ""
FIREFOX_PLAY_AUDIO = _capture("firefox-play-audio-only", "playStream") if OFFERS else ""

LOCAL = LocalEndpoint(
    ice_ufrag="wcUf",
    ice_pwd="webcallwebcallwebcallpwd",
    fingerprint=("sha-256", ":".join(f"{b:02X}" for b in range(32))),
    candidates=(("127.0.0.1", 31000), ("127.0.0.1", 31001)),
)

# --------------------------------------------------------------------------------------------------
# independent SDP reading (regex, no aiortc, no webcall)


def sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    """(session lines, [m-section lines...])."""
    lines = [line for line in re.split(r"\r?\n", sdp) if line]
    session, media = [], []
    for line in lines:
        if line.startswith("m="):
            media.append([line])
        elif media:
            media[-1].append(line)
        else:
            session.append(line)
    return session, media


def attr(section: list[str], name: str) -> list[str]:
    prefix = f"a={name}:"
    return [line[len(prefix):] for line in section if line.startswith(prefix)]


def has_flag(section: list[str], name: str) -> bool:
    return f"a={name}" in section


def rtpmaps(section: list[str]) -> dict[int, str]:
    out = {}
    for value in attr(section, "rtpmap"):
        pt, _, codec = value.partition(" ")
        out[int(pt)] = codec
    return out


def fmtps(section: list[str]) -> dict[int, str]:
    out = {}
    for value in attr(section, "fmtp"):
        pt, _, params = value.partition(" ")
        out[int(pt)] = params
    return out


def pts_of(section: list[str]) -> list[int]:
    return [int(x) for x in section[0].split()[3:]]


def extmaps(section: list[str]) -> dict[str, int]:
    out = {}
    for value in attr(section, "extmap"):
        ident, _, uri = value.partition(" ")
        out[uri.split()[0]] = int(ident.split("/")[0])
    return out


def pt_for(section: list[str], codec: str) -> int:
    return next(pt for pt, c in rtpmaps(section).items() if c.split("/")[0] == codec)


def rtx_for(section: list[str], pt: int) -> int | None:
    return next((p for p, f in fmtps(section).items() if f == f"apt={pt}"), None)


def section_of(sdp: str, kind: str) -> list[str]:
    return next(s for s in sections(sdp)[1] if s[0].startswith(f"m={kind} "))


def mid_of(section: list[str]) -> str:
    return attr(section, "mid")[0]


def sources_from(neg: Negotiation) -> dict[str, Codec]:
    return {t.kind: t.codec for t in neg.tracks}


def h264_codec(profile: str, pt: int = 102, rtx: int | None = 103) -> Codec:
    return Codec("H264", pt, 90000, None, f"level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile}",
                 ("goog-remb", "ccm fir", "nack", "nack pli"), rtx)


OPUS = Codec("opus", 111, 48000, 2, "minptime=10;useinbandfec=1", ())
VP8 = Codec("VP8", 96, 90000, None, "", ("goog-remb", "ccm fir", "nack", "nack pli"), 97)

# --------------------------------------------------------------------------------------------------
# negotiate_publish


@pytest.mark.parametrize("offer", _params(PUBLISH))
def test_publish_picks_vp8_and_opus(offer: str) -> None:
    neg = negotiate_publish(offer)
    audio_s, video_s = section_of(offer, "audio"), section_of(offer, "video")

    audio = neg.track("audio")
    assert audio is not None and audio.kind == "audio"
    assert (audio.codec.name.lower(), audio.codec.clock_rate, audio.codec.channels) == ("opus", 48000, 2)
    assert audio.codec.payload_type == pt_for(audio_s, "opus")
    assert audio.mid == mid_of(audio_s)
    assert audio.ssrc == int(attr(audio_s, "ssrc")[0].split()[0])

    video = neg.track("video")
    assert video is not None and video.codec.name == "VP8"
    vp8_pt = pt_for(video_s, "VP8")
    assert video.codec.payload_type == vp8_pt
    assert video.codec.clock_rate == 90000
    assert video.codec.rtx_payload_type == rtx_for(video_s, vp8_pt) is not None
    fid = attr(video_s, "ssrc-group")[0].split()
    assert fid[0] == "FID"
    assert (video.ssrc, video.rtx_ssrc) == (int(fid[1]), int(fid[2]))
    assert video.mid == mid_of(video_s)
    assert "nack" in video.codec.rtcp_fb and "nack pli" in video.codec.rtcp_fb

    for track, section in ((audio, audio_s), (video, video_s)):
        offered = extmaps(section)
        assert all(offered[uri] == ext_id for uri, ext_id in track.extensions.items()), "ids must be the offer's"
        assert not any("transport-wide-cc" in uri for uri in track.extensions)
    assert [m.mid for m in neg.mlines] == [mid_of(s) for s in sections(offer)[1]]
    assert (neg.ice_ufrag, neg.ice_pwd) == (
        next(v for s in sections(offer)[1] for v in attr(s, "ice-ufrag")),
        next(v for s in sections(offer)[1] for v in attr(s, "ice-pwd")),
    )


def test_publish_keeps_publisher_extensions() -> None:
    video = negotiate_publish(CHROMIUM_PUBLISH).track("video")
    section = section_of(CHROMIUM_PUBLISH, "video")
    assert video.extensions[EXT_ABS_SEND_TIME] == extmaps(section)[EXT_ABS_SEND_TIME]
    assert video.extensions[EXT_MID] == extmaps(section)[EXT_MID]
    # nothing the SFU cannot honour (transport-cc, playout-delay, rid...)
    assert set(video.extensions) <= {
        EXT_ABS_SEND_TIME, EXT_MID, "urn:3gpp:video-orientation", "urn:ietf:params:rtp-hdrext:toffset",
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    }


@pytest.mark.parametrize("offer", _params([(i, s) for i, s in PUBLISH if i.startswith("chromium")]))
def test_publish_h264_preferred_42e01f(offer: str) -> None:
    neg = negotiate_publish(offer, video_prefs=("H264", "VP8"))
    video = neg.track("video")
    section = section_of(offer, "video")
    assert video.codec.name == "H264"
    assert video.codec.params["packetization-mode"] == "1"
    assert video.codec.params["profile-level-id"] == "42e01f"
    assert fmtps(section)[video.codec.payload_type] == video.codec.fmtp  # verbatim
    assert video.codec.rtx_payload_type == rtx_for(section, video.codec.payload_type)
    assert neg.track("audio").codec.name == "opus"


@pytest.mark.parametrize("offer", _params([(i, s) for i, s in PUBLISH if i.startswith("firefox")]))
def test_publish_h264_preference_falls_back_to_vp8_on_firefox(offer: str) -> None:
    assert "H264" not in offer
    assert negotiate_publish(offer, video_prefs=("H264", "VP8")).track("video").codec.name == "VP8"
    only_h264 = negotiate_publish(offer, video_prefs=("H264",))
    assert only_h264.track("video") is None and only_h264.track("audio") is not None


def test_publish_h264_without_packetization_mode_1_is_unusable() -> None:
    offer = CHROMIUM_PUBLISH.replace("packetization-mode=1", "packetization-mode=0")
    assert negotiate_publish(offer, video_prefs=("H264", "VP8")).track("video").codec.name == "VP8"
    assert negotiate_publish(offer, video_prefs=("H264",)).track("video") is None


def test_publish_recvonly_mline_is_rejected() -> None:
    offer = CHROMIUM_PUBLISH.replace("a=sendonly", "a=recvonly")
    with pytest.raises(SdpError) as info:
        negotiate_publish(offer)
    assert info.value.info == "No common codecs"


# --------------------------------------------------------------------------------------------------
# negotiate_play


@pytest.mark.parametrize("offer", _params(PLAY))
@pytest.mark.parametrize("publisher", ["chromium", "firefox"])
def test_play_matches_publisher_codecs(offer: str, publisher: str) -> None:
    sources = sources_from(negotiate_publish(CHROMIUM_PUBLISH if publisher == "chromium" else FIREFOX_PUBLISH))
    neg = negotiate_play(offer, sources)
    for section in sections(offer)[1]:
        kind = section[0][2:7]
        track = next((t for t in neg.tracks if t.mid == mid_of(section)), None)
        assert track is not None, f"{kind} not accepted"
        assert track.kind == kind
        wanted = "opus" if kind == "audio" else "VP8"
        assert track.codec.payload_type == pt_for(section, wanted)
        if kind == "video":
            assert track.codec.rtx_payload_type == rtx_for(section, track.codec.payload_type)
        assert track.ssrc is None
        assert EXT_ABS_SEND_TIME not in track.extensions  # meaningless once forwarded


@pytest.mark.parametrize("offer", [pytest.param(CHROMIUM_PLAY_AUDIO, id="chromium"),
                                   pytest.param(FIREFOX_PLAY_AUDIO, id="firefox")])
def test_play_audio_only_offer(offer: str) -> None:
    neg = negotiate_play(offer, {"audio": OPUS, "video": VP8})
    assert [t.kind for t in neg.tracks] == ["audio"]
    assert neg.track("video") is None
    assert [m.mid for m in neg.mlines] == ["0"]


@pytest.mark.parametrize(
    "offer,sources",
    [
        pytest.param(FIREFOX_PLAY, {"video": h264_codec("42e01f")}, id="firefox-has-no-h264"),
        pytest.param(CHROMIUM_PLAY_AUDIO, {"video": VP8}, id="audio-only-player-video-only-source"),
        pytest.param(CHROMIUM_PLAY, {"video": h264_codec("640c1f")}, id="no-high-profile"),
        pytest.param(CHROMIUM_PLAY, {"audio": Codec("G722", 9, 16000, None, "", ())}, id="clock-rate-mismatch"),
        pytest.param(CHROMIUM_PLAY, {}, id="nothing-published"),
    ],
)
def test_play_no_common_codecs(offer: str, sources: dict) -> None:
    with pytest.raises(SdpError) as info:
        negotiate_play(offer, sources)
    assert info.value.info == "No common codecs"


def test_play_rejects_video_it_cannot_carry_but_keeps_audio() -> None:
    neg = negotiate_play(FIREFOX_PLAY, {"audio": OPUS, "video": h264_codec("42e01f")})
    assert [t.kind for t in neg.tracks] == ["audio"]
    answer = build_answer(neg, LOCAL, direction="sendonly", session_id=5, ssrcs={"0": (11, None)})
    video = section_of(answer, "video")
    assert video[0].split()[1] == "0"  # port 0: rejected
    assert int(video[0].split()[3]) in pts_of(section_of(FIREFOX_PLAY, "video"))
    assert attr(sections(answer)[0], "group") == ["BUNDLE 0"]
    SessionDescription.parse(answer)


def test_play_sendonly_mline_is_rejected() -> None:
    """A player's m-line that only sends has nothing to receive from us."""
    offer = CHROMIUM_PLAY.replace("a=recvonly", "a=sendonly")
    with pytest.raises(SdpError) as info:
        negotiate_play(offer, {"audio": OPUS, "video": VP8})
    assert info.value.info == "No common codecs"
    mixed = CHROMIUM_PLAY.replace("a=recvonly", "a=sendonly", 1)  # audio sends only, video receives
    assert [t.kind for t in negotiate_play(mixed, {"audio": OPUS, "video": VP8}).tracks] == ["video"]


@pytest.mark.parametrize(
    "source,expected",
    [
        ("42e01f", "42e01f"),
        ("42001f", "42001f"),
        ("4d001f", "4d001f"),
        ("42e034", "42e01f"),  # level differs: same profile still carries it
    ],
)
def test_play_h264_matched_by_profile(source: str, expected: str) -> None:
    neg = negotiate_play(CHROMIUM_PLAY, {"video": h264_codec(source)})
    video = neg.track("video")
    section = section_of(CHROMIUM_PLAY, "video")
    assert video.codec.params["profile-level-id"] == expected
    assert video.codec.params["packetization-mode"] == "1"
    assert fmtps(section)[video.codec.payload_type] == video.codec.fmtp
    assert video.codec.rtx_payload_type == rtx_for(section, video.codec.payload_type)


def test_play_h264_constrained_baseline_falls_back_to_baseline() -> None:
    """42e01f source, player without 42e0 but with 4200 and 4d00: the baseline family wins."""
    offer = CHROMIUM_PLAY.replace("profile-level-id=42e01f", "profile-level-id=64001f")
    video = negotiate_play(offer, {"video": h264_codec("42e01f")}).track("video")
    assert video.codec.params["profile-level-id"] == "42001f"


# --------------------------------------------------------------------------------------------------
# bad input


def _drop(sdp: str, pattern: str) -> str:
    return re.sub(pattern, "", sdp, flags=re.MULTILINE)


BAD_SDP = [
    pytest.param("", id="empty"),
    pytest.param("hello", id="hello"),
    pytest.param(None, id="none"),
    pytest.param(b"v=0\r\n", id="bytes"),
    pytest.param("v=0\r\n", id="no-media"),
    pytest.param("\r\n".join(CHROMIUM_PUBLISH.split("\r\n")[:7]) + "\r\n", id="session-only"),
    pytest.param(_drop(CHROMIUM_PUBLISH, r"^a=ice-ufrag:.*\r\n"), id="missing-ice-ufrag"),
    pytest.param(_drop(CHROMIUM_PUBLISH, r"^a=ice-pwd:.*\r\n"), id="missing-ice-pwd"),
    pytest.param(_drop(CHROMIUM_PUBLISH, r"^a=fingerprint:.*\r\n"), id="missing-fingerprint"),
    pytest.param(_drop(FIREFOX_PUBLISH, r"^a=fingerprint:.*\r\n"), id="missing-session-fingerprint"),
    pytest.param(CHROMIUM_PUBLISH.replace("SAVPF 96 97", "SAVPF x6 97"), id="non-numeric-pt-mline"),
    pytest.param(CHROMIUM_PUBLISH.replace("a=rtpmap:96 VP8", "a=rtpmap:x6 VP8"), id="non-numeric-pt-rtpmap"),
    pytest.param(re.sub(r"(m=video 9 UDP/TLS/RTP/SAVPF)[0-9 ]+", r"\1", CHROMIUM_PUBLISH), id="mline-without-codecs"),
    pytest.param(_drop(CHROMIUM_PUBLISH, r"^a=rtpmap:.*\r\n"), id="no-rtpmap"),
    pytest.param(CHROMIUM_PUBLISH.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP8"), id="rtpmap-without-clock"),
    pytest.param(CHROMIUM_PUBLISH.replace("opus/48000/2", "opus/fast/2"), id="rtpmap-bad-clock"),
    pytest.param(CHROMIUM_PUBLISH.replace("m=video 9 ", "m=video nine "), id="bad-port"),
    pytest.param(CHROMIUM_PUBLISH.replace("a=mid:1", "a=mid:0"), id="duplicate-mid"),
    pytest.param(CHROMIUM_PUBLISH.replace("a=ssrc-group:FID ", "a=ssrc-group:FID x"), id="bad-fid"),
    pytest.param(CHROMIUM_PUBLISH.replace("a=extmap:14 ", "a=extmap:fourteen "), id="bad-extmap"),
    pytest.param(CHROMIUM_PUBLISH[: len(CHROMIUM_PUBLISH) // 2], id="truncated"),
    pytest.param(CHROMIUM_PUBLISH.replace("c=IN IP4 0.0.0.0", "c=IN"), id="bad-connection"),
]


@pytest.mark.parametrize("offer", BAD_SDP)
def test_bad_sdp_publish(offer) -> None:
    with pytest.raises(SdpError) as info:
        negotiate_publish(offer)
    assert info.value.info.startswith("Bad SDP"), info.value.info


@pytest.mark.parametrize("offer", BAD_SDP)
def test_bad_sdp_play(offer) -> None:
    if isinstance(offer, str):
        offer = offer.replace("a=sendonly", "a=recvonly")
    with pytest.raises(SdpError) as info:
        negotiate_play(offer, {"audio": OPUS, "video": VP8})
    assert info.value.info.startswith("Bad SDP"), info.value.info


def test_unparsable_sdp_says_where_not_which_exception() -> None:
    offer = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
             "a=rtpmap:111 opus/48000/2\r\nm=video x UDP/TLS/RTP/SAVPF 96\r\n")
    with pytest.raises(SdpError) as info:
        negotiate_play(offer, {"audio": OPUS, "video": VP8})
    assert info.value.info == "Bad SDP: m-line 2 (video) cannot be parsed"
    for bad in BAD_SDP:
        try:
            negotiate_play(bad, {"audio": OPUS, "video": VP8})
        except SdpError as exc:
            assert "Error" not in exc.info and "Exception" not in exc.info, exc.info


def test_sdp_error_is_value_error_with_info() -> None:
    err = SdpError("Bad SDP: x")
    assert isinstance(err, ValueError) and err.info == "Bad SDP: x" and str(err) == "Bad SDP: x"


# --------------------------------------------------------------------------------------------------
# property: random subsets and orders of the captured codec lines


def _codec_blocks(section: list[str]) -> tuple[list[str], dict[int, list[str]], list[str]]:
    """(head lines, pt -> its rtpmap/rtcp-fb/fmtp lines, tail lines such as a=ssrc)."""
    head, tail, blocks = [], [], {}
    for line in section[1:]:
        m = re.match(r"a=(rtpmap|rtcp-fb|fmtp):(\d+) ", line)
        if m:
            blocks.setdefault(int(m.group(2)), []).append(line)
        elif line.startswith(("a=ssrc", "a=candidate", "a=end-of-candidates")):
            tail.append(line)
        else:
            head.append(line)
    return head, blocks, tail


def _random_offer(rng: random.Random, base: str, direction: str) -> tuple[str, dict[str, list[int]]]:
    session, media = sections(base)
    out = list(session)
    kept: dict[str, list[int]] = {}
    for section in media:
        head, blocks, tail = _codec_blocks(section)
        pts = [pt for pt in pts_of(section) if pt in blocks]
        chosen = rng.sample(pts, rng.randrange(0, len(pts) + 1))  # random subset, random order
        lines = []
        for pt in chosen:
            block = list(blocks[pt])
            if rng.random() < 0.05:  # sometimes lose a line (rtpmap too)
                block.pop(rng.randrange(len(block)))
            rng.shuffle(block)
            lines += block
        rng.shuffle(lines)
        fields = section[0].split()[:3]
        kind = fields[0][2:]
        kept[kind] = chosen
        head = [("a=" + direction) if line in ("a=sendonly", "a=recvonly") else line for line in head]
        out += [" ".join(fields + [str(pt) for pt in chosen])] + head + lines + tail
    return "\r\n".join(out) + "\r\n", kept


@pytest.mark.parametrize("base", [pytest.param(CHROMIUM_PUBLISH, id="chromium"),
                                  pytest.param(FIREFOX_PUBLISH, id="firefox")])
def test_random_codec_subsets_negotiate_or_raise_sdp_error(base: str) -> None:
    rng = random.Random(20261125)
    outcomes = {"ok": 0, "error": 0}
    all_prefs = [("VP8", "H264"), ("H264", "VP8"), ("H264",), ("VP8",)]
    play_sources = [{"audio": OPUS, "video": VP8}, {"video": h264_codec("42e01f")},
                    {"audio": OPUS, "video": h264_codec("4d001f")}]
    for _ in range(150):
        prefs = rng.choice(all_prefs)
        offer, kept = _random_offer(rng, base, "sendonly")
        try:
            neg = negotiate_publish(offer, video_prefs=prefs)
        except SdpError:
            outcomes["error"] += 1
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"negotiate_publish raised {type(exc).__name__}: {exc}\n{offer}")
        else:
            outcomes["ok"] += 1
            _check_negotiation(neg, offer, kept)
            video = neg.track("video")
            if video is not None:
                assert video.codec.name.upper() in {p.upper() for p in prefs}
                section = section_of(offer, "video")
                offered = {rtpmaps(section).get(pt, "").split("/")[0] for pt in kept["video"]}
                # the first preference that is usable wins
                if prefs[0] == "VP8" and "VP8" in offered:
                    assert video.codec.name == "VP8"
            _check_answer(build_answer(neg, LOCAL, direction="recvonly", session_id=1), offer)

        sources = rng.choice(play_sources)
        offer, kept = _random_offer(rng, base, "recvonly")
        try:
            neg = negotiate_play(offer, sources)
        except SdpError:
            outcomes["error"] += 1
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"negotiate_play raised {type(exc).__name__}: {exc}\n{offer}")
        else:
            outcomes["ok"] += 1
            _check_negotiation(neg, offer, kept)
            for track in neg.tracks:
                assert track.codec.name.lower() == sources[track.kind].name.lower()
            ssrcs = {t.mid: (1000 + n, 2000 + n) for n, t in enumerate(neg.tracks)}
            _check_answer(build_answer(neg, LOCAL, direction="sendonly", session_id=1, ssrcs=ssrcs), offer)
    assert outcomes["ok"] > 20 and outcomes["error"] > 5, outcomes  # both paths were exercised


def _check_negotiation(neg: Negotiation, offer: str, kept: dict[str, list[int]]) -> None:
    for track in neg.tracks:
        assert track.codec.payload_type in kept[track.kind]
        if track.codec.rtx_payload_type is not None:
            assert track.codec.rtx_payload_type in kept[track.kind]
            assert fmtps(section_of(offer, track.kind))[track.codec.rtx_payload_type] == f"apt={track.codec.payload_type}"
        if track.codec.name == "H264":
            assert track.codec.params.get("packetization-mode") == "1"


def _check_answer(answer: str, offer: str) -> None:
    parsed = SessionDescription.parse(answer)
    assert len(parsed.media) == len(sections(offer)[1])
    for offered, answered in zip(sections(offer)[1], sections(answer)[1]):
        assert set(pts_of(answered)) <= set(pts_of(offered)) or answered[0].split()[1] == "0"


# --------------------------------------------------------------------------------------------------
# build_answer


def _publish_answer(offer: str, **kw) -> tuple[Negotiation, str]:
    neg = negotiate_publish(offer, **kw)
    return neg, build_answer(neg, LOCAL, direction="recvonly", session_id=424242)


def _play_answer(offer: str, sources: dict[str, Codec]) -> tuple[Negotiation, str, dict]:
    neg = negotiate_play(offer, sources)
    ssrcs = {t.mid: (0x1000 + n, 0x2000 + n if t.codec.rtx_payload_type is not None else None)
             for n, t in enumerate(neg.tracks)}
    return neg, build_answer(neg, LOCAL, direction="sendonly", session_id=424243, ssrcs=ssrcs), ssrcs


def _check_common(offer: str, answer: str, direction: str) -> None:
    assert answer.startswith("v=0\r\n") and answer.endswith("\r\n")
    assert "\n" not in answer.replace("\r\n", "")
    session, media = sections(answer)
    offer_media = sections(offer)[1]
    assert has_flag(session, "ice-lite")
    assert [s[0].split()[0] for s in media] == [s[0].split()[0] for s in offer_media]  # same order/kinds
    assert [mid_of(s) for s in media] == [mid_of(s) for s in offer_media]
    accepted = [mid_of(s) for s in media if s[0].split()[1] != "0"]
    assert accepted
    assert attr(session, "group") == ["BUNDLE " + " ".join(accepted)]
    assert "transport-cc" not in answer and "transport-wide-cc" not in answer
    for offered, answered in zip(offer_media, media):
        if answered[0].split()[1] == "0":
            assert mid_of(answered) not in accepted
            continue
        assert answered[0].split()[1] == str(LOCAL.candidates[0][1])
        assert answered[0].split()[2] == offered[0].split()[2]
        assert attr(answered, "setup") == ["passive"]
        assert attr(answered, "ice-ufrag") == [LOCAL.ice_ufrag]
        assert attr(answered, "ice-pwd") == [LOCAL.ice_pwd]
        assert attr(answered, "fingerprint") == [" ".join(LOCAL.fingerprint)]
        candidates = attr(answered, "candidate")
        assert [c.split()[4:6] for c in candidates] == [[ip, str(port)] for ip, port in LOCAL.candidates]
        assert all(c.split()[2].lower() == "udp" and c.endswith("typ host") for c in candidates)
        assert has_flag(answered, "end-of-candidates")
        assert has_flag(answered, "rtcp-mux")
        assert has_flag(answered, direction)
        for other in ("sendrecv", "sendonly", "recvonly", "inactive"):
            if other != direction:
                assert not has_flag(answered, other)
        # only offered payload types, with the offer's names and parameters
        offered_maps, offered_fmtps = rtpmaps(offered), fmtps(offered)
        answer_pts = pts_of(answered)
        assert set(answer_pts) <= set(pts_of(offered))
        for pt, codec in rtpmaps(answered).items():
            assert pt in answer_pts
            assert codec.lower().split("/")[:2] == offered_maps[pt].lower().split("/")[:2]
        for pt, params in fmtps(answered).items():
            assert params == offered_fmtps[pt]
        for fb in attr(answered, "rtcp-fb"):
            assert f"a=rtcp-fb:{fb}" in offered
        # extension ids are the offer's ids
        offered_ext = extmaps(offered)
        for uri, ext_id in extmaps(answered).items():
            assert offered_ext[uri] == ext_id


@pytest.mark.parametrize("offer", _params(PUBLISH))
def test_publish_answer(offer: str) -> None:
    neg, answer = _publish_answer(offer)
    _check_common(offer, answer, "recvonly")
    media = sections(answer)[1]
    for section in media:
        assert not attr(section, "ssrc") and not attr(section, "ssrc-group")  # we send nothing
        assert not attr(section, "msid")
    video = section_of(answer, "video")
    vp8 = neg.track("video").codec
    assert pts_of(video) == [vp8.payload_type, vp8.rtx_payload_type]
    assert fmtps(video)[vp8.rtx_payload_type] == f"apt={vp8.payload_type}"
    assert {"nack", "nack pli", "goog-remb"} <= {fb.split(" ", 1)[1] for fb in attr(video, "rtcp-fb")}
    audio = section_of(answer, "audio")
    assert pts_of(audio) == [neg.track("audio").codec.payload_type]
    assert rtpmaps(audio)[pts_of(audio)[0]] == "opus/48000/2"
    SessionDescription.parse(answer)


@pytest.mark.parametrize("offer", _params([(i, s) for i, s in PUBLISH if i.startswith("chromium")][:1]))
def test_publish_answer_h264(offer: str) -> None:
    neg, answer = _publish_answer(offer, video_prefs=("H264", "VP8"))
    _check_common(offer, answer, "recvonly")
    video = section_of(answer, "video")
    h264 = neg.track("video").codec
    assert pts_of(video) == [h264.payload_type, h264.rtx_payload_type]
    assert "packetization-mode=1" in fmtps(video)[h264.payload_type]
    assert "profile-level-id=42e01f" in fmtps(video)[h264.payload_type]


@pytest.mark.parametrize("offer", _params(PLAY))
def test_play_answer(offer: str) -> None:
    sources = sources_from(negotiate_publish(CHROMIUM_PUBLISH))
    neg, answer, ssrcs = _play_answer(offer, sources)
    _check_common(offer, answer, "sendonly")
    for track in neg.tracks:
        section = next(s for s in sections(answer)[1] if mid_of(s) == track.mid)
        ssrc, rtx_ssrc = ssrcs[track.mid]
        lines = attr(section, "ssrc")
        assert f"{ssrc} cname:webcall" in lines
        assert any(line.startswith(f"{ssrc} msid:") for line in lines)
        if rtx_ssrc is not None:
            assert attr(section, "ssrc-group") == [f"FID {ssrc} {rtx_ssrc}"]
            assert f"{rtx_ssrc} cname:webcall" in lines
        else:
            assert not attr(section, "ssrc-group")
        assert attr(section, "msid")
        # the player's feedback: no REMB (nothing to estimate on a forwarded stream), no transport-cc
        assert all(fb.split(" ", 1)[1] in ("nack", "nack pli", "ccm fir") for fb in attr(section, "rtcp-fb"))
        assert EXT_ABS_SEND_TIME not in extmaps(section)
    SessionDescription.parse(answer)


@pytest.mark.parametrize("offer", _params(OFFERS and [(i, s) for i, s in PUBLISH + PLAY
                                                     if i.split("#")[0] in ("chromium-play", "firefox-play")]))
def test_answer_rtcp_rsize_only_where_offered(offer: str) -> None:
    """a=rtcp-rsize is answered per m-line, only where the offer has it (RFC 5506 §5, JSEP §5.3.1).

    Firefox puts it on its video m-line only."""
    if "a=sendonly" in offer:
        _, answer = _publish_answer(offer)
    else:
        _, answer, _ = _play_answer(offer, {"audio": OPUS, "video": VP8})
    for offered, answered in zip(sections(offer)[1], sections(answer)[1]):
        if answered[0].split()[1] != "0":
            assert has_flag(answered, "rtcp-rsize") == has_flag(offered, "rtcp-rsize"), f"mid {mid_of(answered)}"


def test_answer_session_header() -> None:
    _, answer = _publish_answer(CHROMIUM_PUBLISH)
    session = sections(answer)[0]
    assert session[0] == "v=0"
    assert session[1].startswith("o=") and " 424242 " in session[1] and session[1].endswith(" IN IP4 127.0.0.1")
    assert any(line.startswith("s=") for line in session) and "t=0 0" in session


# --------------------------------------------------------------------------------------------------
# a real aiortc peer accepts the answers


async def _aiortc_round_trip(kinds: tuple[str, ...], direction: str, **negotiate_kw) -> tuple[str, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in kinds:
            pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if direction == "sendonly":
            neg = negotiate_publish(offer, **negotiate_kw)
            answer = build_answer(neg, LOCAL, direction="recvonly", session_id=7)
        else:
            neg = negotiate_play(offer, negotiate_kw["sources"])
            ssrcs = {t.mid: (0xAAAA0000 + n, 0xBBBB0000 + n) for n, t in enumerate(neg.tracks)}
            answer = build_answer(neg, LOCAL, direction="sendonly", session_id=7, ssrcs=ssrcs)
        SessionDescription.parse(answer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert pc.signalingState == "stable"
        return offer, answer
    finally:
        await pc.close()


async def test_aiortc_accepts_publish_answer_vp8() -> None:
    offer, answer = await _aiortc_round_trip(("audio", "video"), "sendonly")
    assert rtpmaps(section_of(answer, "video"))[pts_of(section_of(answer, "video"))[0]] == "VP8/90000"
    _check_common(offer, answer, "recvonly")


async def test_aiortc_accepts_publish_answer_h264() -> None:
    offer, answer = await _aiortc_round_trip(("audio", "video"), "sendonly", video_prefs=("H264", "VP8"))
    video = section_of(answer, "video")
    assert rtpmaps(video)[pts_of(video)[0]] == "H264/90000"
    assert "profile-level-id=42e01f" in fmtps(video)[pts_of(video)[0]]
    _check_common(offer, answer, "recvonly")


async def test_aiortc_accepts_play_answer() -> None:
    offer, answer = await _aiortc_round_trip(("audio", "video"), "recvonly", sources={"audio": OPUS, "video": VP8})
    _check_common(offer, answer, "sendonly")
    assert attr(section_of(answer, "video"), "ssrc-group")


async def test_aiortc_accepts_audio_only_publish() -> None:
    offer, answer = await _aiortc_round_trip(("audio",), "sendonly")
    assert len(sections(answer)[1]) == 1


# --------------------------------------------------------------------------------------------------
# RFC 8843 bundle-only sections (GStreamer / libwebrtc max-bundle) and offers without BUNDLE


async def _aiortc_offer(kinds: tuple[str, ...], direction: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _check_transport_lines(section: list[str]) -> None:
    """What a strict stack (GStreamer webrtcbin, Firefox) wants in every answered section, accepted or not."""
    assert attr(section, "ice-ufrag") == [LOCAL.ice_ufrag] and attr(section, "ice-pwd") == [LOCAL.ice_pwd]
    assert attr(section, "fingerprint") == [" ".join(LOCAL.fingerprint)]
    assert attr(section, "setup") == ["passive"]
    assert len(attr(section, "mid")) == 1


@pytest.mark.parametrize("direction", ["sendonly", "recvonly"])
async def test_bundle_only_sections_are_accepted_as_bundled(direction: str) -> None:
    pc, real_offer = await _aiortc_offer(("audio", "video"), direction)
    try:
        offer = sdpmunge.max_bundle(real_offer)
        video_offer = section_of(offer, "video")
        assert video_offer[0].split()[1] == "0" and has_flag(video_offer, "bundle-only")
        if direction == "sendonly":
            neg = negotiate_publish(offer)
            answer = build_answer(neg, LOCAL, direction="recvonly", session_id=3)
        else:
            neg = negotiate_play(offer, {"audio": OPUS, "video": VP8})
            answer = build_answer(neg, LOCAL, direction="sendonly", session_id=3,
                                  ssrcs={t.mid: (100 + n, None) for n, t in enumerate(neg.tracks)})
        assert [t.kind for t in neg.tracks] == ["audio", "video"]
        _check_common(offer, answer, "recvonly" if direction == "sendonly" else "sendonly")
        for section in sections(answer)[1]:
            assert section[0].split()[1] == str(LOCAL.candidates[0][1])  # a port: answers carry no bundle-only
            assert not has_flag(section, "bundle-only")
            _check_transport_lines(section)
            assert has_flag(section, "rtcp-mux")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert pc.signalingState == "stable"
    finally:
        await pc.close()


def test_bundle_only_section_outside_the_group_is_rejected() -> None:
    offer = sdpmunge.max_bundle(CHROMIUM_PUBLISH)
    video_mid = mid_of(section_of(offer, "video"))
    offer = re.sub(r"^(a=group:BUNDLE [^\r\n]*)", lambda m: " ".join(x for x in m.group(1).split(" ") if x != video_mid),
                   offer, flags=re.M)
    neg = negotiate_publish(offer)
    assert [t.kind for t in neg.tracks] == ["audio"]
    answer = build_answer(neg, LOCAL, direction="recvonly", session_id=3)
    video = section_of(answer, "video")
    assert video[0].split()[1] == "0" and has_flag(video, "inactive")
    assert attr(sections(answer)[0], "group") == ["BUNDLE " + mid_of(section_of(answer, "audio"))]


def test_port_zero_without_bundle_only_is_rejected() -> None:
    offer = sdpmunge.max_bundle(CHROMIUM_PUBLISH).replace("a=bundle-only\r\n", "")
    assert [t.kind for t in negotiate_publish(offer).tracks] == ["audio"]


def test_rejected_section_has_what_strict_stacks_check() -> None:
    """GStreamer's webrtcbin validates ice-ufrag, ice-pwd, setup, mid and a fingerprint in every m-section,
    rejected ones included; Chromium and Firefox want the mid and port 0."""
    neg = negotiate_play(FIREFOX_PLAY, {"audio": OPUS, "video": h264_codec("42e01f")})
    answer = build_answer(neg, LOCAL, direction="sendonly", session_id=5, ssrcs={"0": (11, None)})
    video = section_of(answer, "video")
    assert video[0].split()[1] == "0"
    _check_transport_lines(video)
    assert has_flag(video, "inactive") and not attr(video, "candidate")
    assert mid_of(video) not in attr(sections(answer)[0], "group")[0].split()[1:]


async def test_offer_without_bundle_one_section_works_without_group() -> None:
    pc, real_offer = await _aiortc_offer(("audio",), "sendonly")
    try:
        offer = sdpmunge.without_bundle(real_offer)
        assert "a=group:" not in offer
        neg = negotiate_publish(offer)
        answer = build_answer(neg, LOCAL, direction="recvonly", session_id=3)
        assert not attr(sections(answer)[0], "group")  # no group the offer did not have (RFC 8843 §7.3)
        _check_transport_lines(section_of(answer, "audio"))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    finally:
        await pc.close()


@pytest.mark.parametrize("offer", _params([("chromium-publish", CHROMIUM_PUBLISH), ("firefox-publish", FIREFOX_PUBLISH)]))
def test_offer_without_bundle_several_sections_fails_clearly(offer: str) -> None:
    with pytest.raises(SdpError) as info:
        negotiate_publish(sdpmunge.without_bundle(offer))
    assert info.value.info == NO_BUNDLE
    assert "BUNDLE" in info.value.info
