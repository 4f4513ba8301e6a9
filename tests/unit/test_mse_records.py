"""webcall/mse/flv.py and mse/signalling.py against a reader written here from spec §11.1 (the SDK's demuxer),
and the shared-feed fan-out's start rules (streams/feeds.py) with a feed that is only a list of chunks."""

from __future__ import annotations

import asyncio

import struct

import pytest

from webcall.mse import flv
from webcall.mse.signalling import feed_answer
from webcall.streams import feeds as feeds_mod

SPS = bytes.fromhex("6742c01e8c8d40a0fd00f08846a0")
PPS = bytes.fromhex("68ce3c80")
IDR = bytes((0x65,)) + bytes(range(40))
SLICE = bytes((0x41,)) + bytes(range(30))


def read(frame: bytes) -> list[tuple[int, int, bytes]]:
    """tag u8, timestamp i32, length i32, payload — back to back, big-endian (spec §11.1)."""
    out, pos = [], 0
    while pos < len(frame):
        tag, ts, n = struct.unpack(">BiI", frame[pos : pos + 9])
        out.append((tag, ts, frame[pos + 9 : pos + 9 + n]))
        pos += 9 + n
    assert pos == len(frame)
    return out


def test_avc_sequence_header_is_an_avcc_the_sdk_reads() -> None:
    ((tag, ts, body),) = read(flv.avc_sequence_header(1234, SPS, PPS))
    assert (tag, ts) == (9, 1234)
    assert body[:5] == b"\x17\x00\x00\x00\x00"  # keyframe+AVC, AVCPacketType 0, composition time 0
    avcc = body[5:]
    assert avcc[0] == 1 and avcc[1:4] == SPS[1:4]  # version, profile/compat/level
    assert (avcc[4] & 3) + 1 == 4  # 4-byte NAL lengths
    assert avcc[5] & 0x1F == 1 and int.from_bytes(avcc[6:8], "big") == len(SPS) and avcc[8 : 8 + len(SPS)] == SPS
    rest = avcc[8 + len(SPS):]
    assert rest[0] == 1 and int.from_bytes(rest[1:3], "big") == len(PPS) and rest[3:] == PPS
    assert flv.codec_string(SPS) == "avc1.42C01E"


@pytest.mark.parametrize("keyframe", [True, False])
def test_avc_frame_is_length_prefixed_nal_units_without_parameter_sets(keyframe: bool) -> None:
    nals = [SPS, PPS, IDR] if keyframe else [SLICE, SLICE]
    ((tag, ts, body),) = read(flv.avc_frame(-5, nals, keyframe))
    assert (tag, ts) == (9, -5)
    assert body[0] == (0x17 if keyframe else 0x27) and body[1] == 1 and body[2:5] == b"\x00\x00\x00"
    got, pos = [], 5
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 4], "big")
        got.append(body[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert got == ([IDR] if keyframe else [SLICE, SLICE])


def test_annexb_split_takes_three_and_four_byte_start_codes() -> None:
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01" + IDR
    assert flv.split_annexb(data) == [SPS, PPS, IDR]


def test_audio_records_have_no_flv_sound_format_byte() -> None:
    asc = flv.audio_specific_config(48000, 1)
    assert asc == bytes((0x11, 0x88))  # AAC-LC, index 3 (48 kHz), mono
    (tag, ts, body), (tag2, ts2, body2) = read(flv.aac_sequence_header(0, asc) + flv.aac_frame(21, b"\x21\x10"))
    assert (tag, ts, body) == (8, 0, b"\x00" + asc)
    assert (tag2, ts2, body2) == (8, 21, b"\x01\x21\x10")


def test_timestamps_wrap_like_an_i32() -> None:
    ((_, ts, _),) = read(flv.record(9, 2**31 + 5, b""))
    assert ts == -(2**31) + 5


def test_answer_rejects_only_the_kinds_not_sent() -> None:
    offer = ("v=0\r\nm=video 0 RTP/AVP 112\r\na=rtpmap:112 H264/90000\r\na=recvonly\r\n"
             "m=audio 0 RTP/AVP 108\r\na=rtpmap:108 mpeg4-generic/48000/1\r\na=recvonly\r\n")
    both = feed_answer(offer, True, True)
    assert "m=video 9 RTP/AVP 112" in both and "m=audio 9 RTP/AVP 108" in both
    video_only = feed_answer(offer, True, False)
    assert "m=video 9 " in video_only and "m=audio 0 " in video_only


class FakeHandle:
    transcoding_video = False

    def __init__(self) -> None:
        self.keyframes = 0
        self.closed = False

    def request_keyframe(self) -> None:
        self.keyframes += 1

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict:
        return {}


class ListSink:
    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.failed: str | None = None

    def on_chunks(self, data: list[bytes]) -> None:
        self.got.extend(data)

    def on_feed_failed(self, info: str) -> None:
        self.failed = info


async def test_shared_feed_starts_each_player_at_headers_then_keyframe() -> None:
    handles: list[tuple[FakeHandle, object]] = []

    def start(router, output, emit, on_failed, label, profile=None):
        handle = FakeHandle()
        handles.append((handle, emit))
        return handle

    hub = feeds_mod.Feeds(start)
    router = object()
    first, second, late = ListSink(), ListSink(), ListSink()
    feed = hub.subscribe(router, "mse", first, "s", has_video=True)
    assert hub.subscribe(router, "mse", second, "s", has_video=True) is feed and len(handles) == 1  # shared
    handle, emit = handles[0]
    vcfg, acfg = flv.avc_sequence_header(0, SPS, PPS), flv.aac_sequence_header(0, b"\x11\x88")
    delta = flv.avc_frame(10, [SLICE], False)
    key = flv.avc_frame(40, [IDR], True)
    audio = flv.aac_frame(45, b"\x00")
    emit([("vconfig", vcfg), ("delta", delta), ("aconfig", acfg), ("key", key), ("audio", audio)])
    for sink in (first, second):
        assert sink.got == [vcfg, acfg, key, audio]  # the delta before any keyframe is useless to a player
    hub.subscribe(router, "mse", late, "s", has_video=True)
    assert late.got == [vcfg, acfg, key, audio]  # the cached GOP, at once
    hub.unsubscribe(feed, first)
    emit([("delta", delta)])
    assert first.got[-1] == audio and second.got[-1] == delta
    handle_failed = feed.handle
    assert handle_failed is handle
    hub._on_failed(feed, "Transcoding failed: X")
    assert second.failed == late.failed == "Transcoding failed: X" and first.failed is None


async def test_mse_joiner_takes_a_cached_gop_up_to_2s_old_wsplayer_only_a_fresh_one(monkeypatch) -> None:
    """The SDK's MSE player buffers 2 s before it shows anything, so a GOP under 2 s old costs an MSE joiner
    no latency and saves it first-frame time; WSPlayer shows frames as they come, so it waits for a fresh key."""
    handles: list[tuple[FakeHandle, object]] = []

    def start(router, output, emit, on_failed, label, profile=None):
        handles.append((FakeHandle(), emit))
        return handles[-1][0]

    hub = feeds_mod.Feeds(start)
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    vcfg, acfg = flv.avc_sequence_header(0, SPS, PPS), flv.aac_sequence_header(0, b"\x11\x88")
    key, delta = flv.avc_frame(0, [IDR], True), flv.avc_frame(33, [SLICE], False)
    router = object()
    for output in ("mse", "wsplayer"):
        hub.subscribe(router, output, ListSink(), "s", has_video=True)
        handles[-1][1]([("vconfig", vcfg), ("aconfig", acfg), ("key", key), ("delta", delta)])
    now[0] += 1.5  # the cached keyframe is 1.5 s old
    mse, wsp = ListSink(), ListSink()
    hub.subscribe(router, "mse", mse, "s", has_video=True)
    hub.subscribe(router, "wsplayer", wsp, "s", has_video=True)
    assert mse.got == [vcfg, acfg, key, delta] and handles[0][0].keyframes == 0
    assert wsp.got == [] and handles[1][0].keyframes == 1
    now[0] += 0.6  # 2.1 s: too old for MSE as well (it would add latency), a fresh keyframe is asked for
    late = ListSink()
    hub.subscribe(router, "mse", late, "s", has_video=True)
    assert late.got == [] and handles[0][0].keyframes == 1


async def test_mse_joiner_gets_the_gop_before_a_young_one_so_the_sdk_starts_at_once(monkeypatch) -> None:
    handles: list[tuple[FakeHandle, object]] = []

    def start(router, output, emit, on_failed, label, profile=None):
        handles.append((FakeHandle(), emit))
        return handles[-1][0]

    hub = feeds_mod.Feeds(start)
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    vcfg, acfg = flv.avc_sequence_header(0, SPS, PPS), flv.aac_sequence_header(0, b"\x11\x88")
    key1, d1 = flv.avc_frame(0, [IDR], True), flv.avc_frame(33, [SLICE], False)
    key2, d2 = flv.avc_frame(2000, [IDR], True), flv.avc_frame(2033, [SLICE], False)
    router = object()
    hub.subscribe(router, "mse", ListSink(), "s", has_video=True)
    emit = handles[0][1]
    emit([("vconfig", vcfg), ("aconfig", acfg), ("key", key1), ("delta", d1)])
    now[0] += 2.0
    vcfg2 = flv.avc_sequence_header(2000, SPS, PPS)  # the same avcC, stamped again before the next keyframe
    emit([("vconfig", vcfg2), ("key", key2), ("delta", d2)])
    now[0] += 0.5  # the latest keyframe is 0.5 s old, the one before 2.5 s
    mse = ListSink()
    hub.subscribe(router, "mse", mse, "s", has_video=True)
    assert mse.got == [vcfg, acfg, key1, d1, key2, d2] and handles[0][0].keyframes == 0  # avcC at key1's time
    other = flv.avc_sequence_header(2400, SPS[:-1] + b"\x29", PPS)  # a new size: the older GOP cannot go with it
    key3 = flv.avc_frame(2400, [IDR], True)
    emit([("vconfig", other), ("key", key3)])
    again = ListSink()
    hub.subscribe(router, "mse", again, "s", has_video=True)
    assert again.got == [other, acfg, key3]


# --- WSPlayer packets (spec §11.2), read as WSReceiver2.js reads them -------------------------------------------


def read_wsplayer(packet: bytes) -> dict:
    b0 = packet[0]
    out = {"type": (b0 >> 2) & 3, "has_ssrc": (b0 >> 1) & 1, "has_ts": b0 & 1, "key": (b0 >> 4) & 1}
    if out["type"] == 3:
        out["ssrc"], out["rtp"], out["sec"], out["frac"] = struct.unpack(">iIII", packet[1:17])
        out["rest"] = packet[17:]
        return out
    pos = 1
    if out["has_ssrc"]:
        out["ssrc"] = struct.unpack_from(">I", packet, pos)[0]
        pos += 4
    if out["has_ts"]:
        out["ts"] = struct.unpack_from(">I", packet, pos)[0]
        pos += 4
    out["payload"] = packet[pos:]
    return out


def test_wsplayer_video_audio_and_sync_packets() -> None:
    from webcall.wsplayer import packets as wsp

    v = read_wsplayer(wsp.video_packet(0xDEADBEEF, 90_000 * 5 + 2**32, b"\x00\x00\x01\xb3xyz", True))
    assert (v["type"], v["has_ssrc"], v["has_ts"], v["key"]) == (1, 1, 1, 1)
    assert v["ssrc"] == 0xDEADBEEF and v["ts"] == 450_000 and v["payload"] == b"\x00\x00\x01\xb3xyz"
    assert read_wsplayer(wsp.video_packet(1, 0, b"p", False))["key"] == 0
    a = read_wsplayer(wsp.audio_packet(7, 160, b"\xff" * 160))
    assert (a["type"], a["ssrc"], a["ts"], len(a["payload"])) == (2, 7, 160, 160) and a["key"] == 0
    s = read_wsplayer(wsp.sync_packet(0xDEADBEEF, 1234, 61_250))
    assert s["type"] == 3 and s["ssrc"] & 0xFFFFFFFF == 0xDEADBEEF and s["rtp"] == 1234
    assert s["sec"] == 61 and abs(s["frac"] / 2**32 - 0.25) < 1e-9 and s["rest"] == b""
