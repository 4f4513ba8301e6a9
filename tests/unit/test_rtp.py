"""RTP packet surgery (webcall/media/rtp.py): header layout, header extensions, keyframes and sizes.

Packets are built by hand with `struct`, or come from aiortc's real VP8/H264 encoders and packetizers
(and, for SPS variants aiortc never produces, from libx264 through PyAV). Nothing here is mocked.
"""

from __future__ import annotations

import fractions
import random
import struct

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from tests.support.rtpgen import vp8_descriptor_length
from webcall.media.rtp import (
    ExtensionPlan,
    build_extensions,
    h264_keyframe_size,
    h264_sps_size,
    is_rtcp,
    parse_extensions,
    split,
    vp8_keyframe_size,
)

# --------------------------------------------------------------------------------------------------
# helpers (independent of the code under test)


def rtp(
    payload: bytes = b"payload",
    *,
    seq: int = 1,
    ts: int = 1000,
    ssrc: int = 0x01020304,
    pt: int = 96,
    marker: bool = False,
    csrcs: tuple[int, ...] = (),
    ext: tuple[int, bytes] | None = None,  # (profile, body) — body length must be a multiple of 4
    padding: int = 0,
) -> bytes:
    b0 = 0x80 | len(csrcs)
    if ext is not None:
        b0 |= 0x10
    if padding:
        b0 |= 0x20
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        profile, body = ext
        assert len(body) % 4 == 0
        out += struct.pack("!HH", profile, len(body) // 4) + body
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes((padding,))
    return out


def one_byte_body(elements: list[tuple[int, bytes]], pad_between: int = 0) -> bytes:
    body = b""
    for ext_id, value in elements:
        body += bytes(((ext_id << 4) | (len(value) - 1),)) + value + bytes(pad_between)
    return body + bytes(-len(body) % 4)


def two_byte_body(elements: list[tuple[int, bytes]], pad_between: int = 0) -> bytes:
    body = b""
    for ext_id, value in elements:
        body += bytes((ext_id, len(value))) + value + bytes(pad_between)
    return body + bytes(-len(body) % 4)


def wrap(payload: bytes, seq: int = 0, ts: int = 0, marker: bool = False) -> bytes:
    """A bare 12-byte RTP header in front of a packetizer payload."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq & 0xFFFF, ts, 0xCAFE) + payload


def probe(fn, packet: bytes):
    _, ext_end, end = split(packet)
    return fn(packet, ext_end, end)


def video_frame(width: int, height: int, index: int) -> av.VideoFrame:
    """A moving gradient with a little noise: realistic enough, and cheap to encode."""
    y, x = np.mgrid[0:height, 0:width]
    base = ((x + y + 7 * index) % 256).astype(np.uint8)
    noise = np.random.default_rng(index).integers(0, 24, (height, width), dtype=np.uint8)
    rgb = np.stack([base, (base // 2 + noise), (255 - base)], axis=-1).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frame.pts = index * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def encode_key_then_delta(mime: str, width: int, height: int, **params) -> tuple[list[bytes], list[bytes]]:
    """RTP packets of a forced keyframe and of the following (non-forced) frame."""
    codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000, parameters=params)
    encoder = get_encoder(codec)
    frames = []
    seq = 0
    for index, force in enumerate((True, False)):
        payloads, timestamp = encoder.encode(video_frame(width, height, index), force_keyframe=force)
        assert payloads, "the encoder produced nothing"
        packets = []
        for i, payload in enumerate(payloads):
            packets.append(wrap(payload, seq, timestamp, marker=i == len(payloads) - 1))
            seq += 1
        frames.append(packets)
    return frames[0], frames[1]


# --------------------------------------------------------------------------------------------------
# split()


def test_split_plain_packet() -> None:
    packet = rtp(b"abcdef")
    assert split(packet) == (12, 12, len(packet))


def test_split_with_csrcs() -> None:
    packet = rtp(b"abcdef", csrcs=(1, 2, 3))
    assert split(packet) == (24, 24, len(packet))
    assert packet[24:] == b"abcdef"


def test_split_with_one_byte_extension_and_csrcs() -> None:
    body = one_byte_body([(1, b"\x80"), (3, b"\x01\x02\x03")])
    packet = rtp(b"PAYLOAD", csrcs=(7, 8), ext=(0xBEDE, body))
    csrc_end, ext_end, end = split(packet)
    assert csrc_end == 12 + 8
    assert ext_end == csrc_end + 4 + len(body)
    assert packet[ext_end:end] == b"PAYLOAD"


def test_split_with_two_byte_extension() -> None:
    body = two_byte_body([(20, b"x" * 20), (1, b"")])
    packet = rtp(b"PAYLOAD", ext=(0x1000, body))
    csrc_end, ext_end, end = split(packet)
    assert (csrc_end, ext_end) == (12, 16 + len(body))
    assert packet[ext_end:end] == b"PAYLOAD"


@pytest.mark.parametrize("padding", [1, 2, 7, 255])
def test_split_strips_padding(padding: int) -> None:
    packet = rtp(b"PAYLOAD", csrcs=(9,), ext=(0xBEDE, one_byte_body([(2, b"abc")])), padding=padding)
    _, ext_end, end = split(packet)
    assert end == len(packet) - padding
    assert packet[ext_end:end] == b"PAYLOAD"


def test_split_padding_only_packet_has_empty_payload() -> None:
    packet = rtp(b"", padding=200)
    assert split(packet) == (12, 12, 12)


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80", id="1-byte"),
        pytest.param(b"\x80\x60\x00\x01", id="4-bytes"),
        pytest.param(rtp(b"")[:11], id="11-bytes"),
        pytest.param(rtp(b"x", csrcs=(1, 2, 3))[:20], id="csrcs-cut"),
        pytest.param(bytes((0x8F,)) + rtp(b"")[1:], id="15-csrcs-missing"),
        pytest.param(rtp(b"", ext=(0xBEDE, b"\x10\x01\x00\x00"))[:14], id="ext-header-cut"),
        pytest.param(rtp(b"", ext=(0xBEDE, b"\x10\x01\x00\x00"))[:18], id="ext-body-cut"),
        pytest.param(bytes((0x90,)) + rtp(b"")[1:12] + b"\xbe\xde\xff\xff" + b"x" * 20, id="ext-length-huge"),
        pytest.param(bytes((0xA0,)) + rtp(b"")[1:] + b"ab\xff", id="padding-longer-than-packet"),
        pytest.param(bytes((0xB0,)) + rtp(b"")[1:] + b"\xbe\xde\x00\x01\x10\x01\x00\x00" + b"\x09", id="padding-eats-ext"),
    ],
)
def test_split_rejects_malformed_with_value_error(packet: bytes) -> None:
    with pytest.raises(ValueError):
        split(packet)


def test_split_fuzz_raises_value_error_only() -> None:
    """Random bytes and every prefix of real packets: a valid (start <= ext_end <= end) split or ValueError."""
    rng = random.Random(1234)
    samples: list[bytes] = []
    full = rtp(b"PAYLOAD" * 3, csrcs=(1, 2), ext=(0xBEDE, one_byte_body([(1, b"\x7f"), (5, b"abcd")])), padding=5)
    samples += [full[:n] for n in range(len(full) + 1)]
    two = rtp(b"P", ext=(0x1000, two_byte_body([(40, b"z" * 30)])), padding=3)
    samples += [two[:n] for n in range(len(two) + 1)]
    for _ in range(3000):
        n = rng.randrange(0, 80)
        data = bytearray(rng.getrandbits(8) for _ in range(n))
        if n and rng.random() < 0.7:
            data[0] = 0x80 | (data[0] & 0x3F)  # version 2 with random P/X/CC: the interesting cases
        samples.append(bytes(data))
    # (the empty datagram has its own case in test_split_rejects_malformed_with_value_error)
    for data in filter(None, samples):
        try:
            csrc_end, ext_end, end = split(data)
        except ValueError:
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"split({data.hex()}) raised {type(exc).__name__}: {exc}")
        assert 12 <= csrc_end <= ext_end <= end <= len(data), data.hex()
        # whatever split accepted, the extension parser copes with
        if ext_end > csrc_end:
            parse_extensions(data, csrc_end, ext_end)


def test_is_rtcp() -> None:
    assert is_rtcp(bytes((0x80, 200)) + bytes(6))  # SR
    assert is_rtcp(bytes((0x81, 205)) + bytes(10))  # RTPFB
    assert not is_rtcp(rtp(pt=96))
    assert not is_rtcp(rtp(pt=111, marker=True))  # 0x80|111 = 239


# --------------------------------------------------------------------------------------------------
# header extensions


def _ext_block(packet: bytes) -> tuple[int, int]:
    csrc_end, ext_end, _ = split(packet)
    return csrc_end, ext_end


def test_parse_one_byte_extensions_with_padding_between() -> None:
    elements = [(1, b"\x85"), (2, b"\x01\x02\x03"), (4, b"1"), (14, b"\x00\x00\x10")]
    packet = rtp(ext=(0xBEDE, one_byte_body(elements, pad_between=2)), csrcs=(5,))
    assert parse_extensions(packet, *_ext_block(packet)) == elements


def test_parse_one_byte_extensions_sixteen_byte_value() -> None:
    elements = [(3, bytes(range(16))), (5, b"x")]
    packet = rtp(ext=(0xBEDE, one_byte_body(elements)))
    assert parse_extensions(packet, *_ext_block(packet)) == elements


def test_parse_one_byte_stops_at_id_15() -> None:
    body = b"\x10a" + b"\xf0z" + b"\x20b" + bytes(2)  # id 1, then id 15 (reserved: stop), then id 2
    packet = rtp(ext=(0xBEDE, body))
    assert parse_extensions(packet, *_ext_block(packet)) == [(1, b"a")]


def test_parse_two_byte_extensions() -> None:
    elements = [(1, b""), (20, b"y" * 40), (255, b"\x01"), (3, b"abc")]
    packet = rtp(ext=(0x1000, two_byte_body(elements, pad_between=1)))
    assert parse_extensions(packet, *_ext_block(packet)) == elements


def test_parse_two_byte_extensions_with_appbits() -> None:
    elements = [(7, b"hello")]
    packet = rtp(ext=(0x100A, two_byte_body(elements)))
    assert parse_extensions(packet, *_ext_block(packet)) == elements


def test_parse_unknown_profile_gives_nothing() -> None:
    packet = rtp(ext=(0xABCD, b"\x11\x22\x33\x44"))
    assert parse_extensions(packet, *_ext_block(packet)) == []


def test_parse_empty_block() -> None:
    packet = rtp()
    assert parse_extensions(packet, 12, 12) == []


@pytest.mark.parametrize(
    "profile,body",
    [
        # one-byte element claiming 16 bytes in a 4-byte block, payload behind it
        pytest.param(0xBEDE, b"\x1f\x00\x00\x00", id="one-byte"),
        # two-byte element claiming 32 bytes in a 4-byte block
        pytest.param(0x1000, b"\x01\x20\x00\x00", id="two-byte"),
    ],
)
def test_parse_extensions_never_reads_past_the_block(profile: int, body: bytes) -> None:
    """An element whose length overruns the block must not swallow payload bytes (RFC 8285 §4.2/4.3)."""
    packet = rtp(b"PAYLOAD-PAYLOAD-PAYLOAD", ext=(profile, body))
    start, end = _ext_block(packet)
    elements = parse_extensions(packet, start, end)
    for _, value in elements:
        assert b"PAYLOAD"[:3] not in value, f"payload bytes leaked into an extension element: {elements}"
        assert len(value) <= end - start - 4


def test_build_extensions_one_byte_form() -> None:
    block = build_extensions([(1, b"\x80"), (4, b"1")])
    assert block[:2] == b"\xbe\xde"
    assert len(block) % 4 == 0
    words = struct.unpack_from("!H", block, 2)[0]
    assert len(block) == 4 + 4 * words
    assert block[4:8] == bytes((0x10, 0x80, 0x40)) + b"1"


@pytest.mark.parametrize(
    "elements",
    [
        pytest.param([(15, b"a")], id="id-15"),
        pytest.param([(200, b"a")], id="id-200"),
        pytest.param([(1, b"x" * 17)], id="17-bytes"),
        pytest.param([(1, b"")], id="empty-value"),
        pytest.param([(1, b"a"), (16, b"b")], id="mixed"),
    ],
)
def test_build_extensions_two_byte_form_when_needed(elements) -> None:
    block = build_extensions(elements)
    assert struct.unpack_from("!H", block, 0)[0] & 0xFFF0 == 0x1000
    assert len(block) % 4 == 0 and len(block) == 4 + 4 * struct.unpack_from("!H", block, 2)[0]
    packet = rtp(b"PAY")[:12] + block + b"PAY"
    packet = bytes((packet[0] | 0x10,)) + packet[1:]
    assert parse_extensions(packet, *_ext_block(packet)) == elements


def test_build_extensions_empty() -> None:
    assert build_extensions([]) == b""


def test_extensions_round_trip_random() -> None:
    rng = random.Random(99)
    for _ in range(500):
        n = rng.randrange(1, 8)
        if rng.random() < 0.5:  # one-byte compatible
            elements = [(rng.randrange(1, 15), rng.randbytes(rng.randrange(1, 17))) for _ in range(n)]
        else:
            elements = [(rng.randrange(1, 256), rng.randbytes(rng.randrange(0, 40))) for _ in range(n)]
        block = build_extensions(elements)
        packet = bytes((0x90,)) + rtp(b"")[1:12] + block + b"payload"
        csrc_end, ext_end, end = split(packet)
        assert ext_end == 12 + len(block)
        assert packet[ext_end:end] == b"payload"
        assert parse_extensions(packet, csrc_end, ext_end) == elements
        one_byte_ok = all(0 < i < 15 and 0 < len(v) <= 16 for i, v in elements)
        assert (block[:2] == b"\xbe\xde") == one_byte_ok


# --------------------------------------------------------------------------------------------------
# VP8 (aiortc's real encoder and packetizer)


@pytest.fixture(scope="module")
def vp8_640() -> tuple[list[bytes], list[bytes]]:
    return encode_key_then_delta("video/VP8", 640, 480)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (322, 242)])
def test_vp8_keyframe_size_real_encoder(size: tuple[int, int], vp8_640) -> None:
    key, delta = vp8_640 if size == (640, 480) else encode_key_then_delta("video/VP8", *size)
    assert len(key) > 1, "expected a multi-packet keyframe"
    assert probe(vp8_keyframe_size, key[0]) == size
    assert [probe(vp8_keyframe_size, p) for p in key[1:]] == [None] * (len(key) - 1)
    assert [probe(vp8_keyframe_size, p) for p in delta] == [None] * len(delta)


def _vp8_strip_descriptor(payload: bytes) -> bytes:
    """The VP8 bitstream behind aiortc's payload descriptor."""
    return payload[vp8_descriptor_length(payload):]


@pytest.mark.parametrize(
    "descriptor",
    [
        pytest.param(b"\x10", id="no-X"),
        pytest.param(b"\x90\x80\x05", id="7-bit-picture-id"),
        pytest.param(b"\x90\x80\x81\x23", id="15-bit-picture-id"),
        pytest.param(b"\x90\xc0\x81\x23\x07", id="picture-id+TL0PICIDX"),
        pytest.param(b"\x90\xf0\x81\x23\x07\x40", id="all-extensions"),
        pytest.param(b"\x90\x20\x40", id="T-only"),
        pytest.param(b"\x90\x00", id="X-without-fields"),
    ],
)
def test_vp8_descriptor_variants(descriptor: bytes, vp8_640) -> None:
    bitstream = _vp8_strip_descriptor(vp8_640[0][0][12:])
    assert probe(vp8_keyframe_size, wrap(descriptor + bitstream)) == (640, 480)
    # same descriptor on an inter frame: not a keyframe
    inter = _vp8_strip_descriptor(vp8_640[1][0][12:])
    assert probe(vp8_keyframe_size, wrap(descriptor + inter)) is None


def test_vp8_not_a_frame_start() -> None:
    frame = bytes((0x50, 0x01, 0x00)) + b"\x9d\x01\x2a" + struct.pack("<HH", 640, 480) + bytes(20)
    assert probe(vp8_keyframe_size, wrap(b"\x10" + frame)) == (640, 480)
    assert probe(vp8_keyframe_size, wrap(b"\x00" + frame)) is None  # S = 0
    assert probe(vp8_keyframe_size, wrap(b"\x11" + frame)) is None  # partition index 1
    inter = bytes((frame[0] | 0x01,)) + frame[1:]
    assert probe(vp8_keyframe_size, wrap(b"\x10" + inter)) is None  # P bit: inter frame
    bad_start = frame[:3] + b"\x9d\x01\x2b" + frame[6:]
    assert probe(vp8_keyframe_size, wrap(b"\x10" + bad_start)) is None


def test_vp8_scaling_bits_are_masked() -> None:
    frame = bytes((0x50, 0x01, 0x00)) + b"\x9d\x01\x2a" + struct.pack("<HH", 0x4000 | 320, 0xC000 | 180) + bytes(8)
    assert probe(vp8_keyframe_size, wrap(b"\x10" + frame)) == (320, 180)


def test_vp8_keyframe_with_padding_and_extension() -> None:
    frame = bytes((0x50, 0x01, 0x00)) + b"\x9d\x01\x2a" + struct.pack("<HH", 800, 600) + bytes(8)
    packet = rtp(b"\x10" + frame, ext=(0xBEDE, one_byte_body([(2, b"abc")])), csrcs=(3,), padding=9)
    assert probe(vp8_keyframe_size, packet) == (800, 600)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x90", id="X-cut"),
        pytest.param(b"\x90\x80", id="picture-id-cut"),
        pytest.param(b"\x90\x80\x81", id="15-bit-picture-id-cut"),
        pytest.param(b"\x10\x50\x01\x00\x9d\x01\x2a\x80", id="size-cut"),
    ],
)
def test_vp8_truncated_payload_is_not_a_keyframe(payload: bytes) -> None:
    """A truncated (or empty: header-only) packet is simply not a keyframe; it must not raise."""
    assert probe(vp8_keyframe_size, wrap(payload)) is None


# --------------------------------------------------------------------------------------------------
# H264 (aiortc's real encoder and packetizer)

H264_PARAMS = {"packetization-mode": "1", "profile-level-id": "42e01f"}


def _nal_units_independent(payload: bytes) -> list[bytes]:
    """NAL units that start in an RTP payload (RFC 6184), parsed here without the code under test."""
    nal_type = payload[0] & 0x1F
    if nal_type == 24:
        out, pos = [], 1
        while pos + 2 <= len(payload):
            (size,) = struct.unpack_from("!H", payload, pos)
            out.append(payload[pos + 2 : pos + 2 + size])
            pos += 2 + size
        return out
    if nal_type == 28:
        if payload[1] & 0x80:
            return [bytes(((payload[0] & 0xE0) | (payload[1] & 0x1F),)) + payload[2:]]
        return []
    return [payload]


@pytest.fixture(scope="module")
def h264_streams() -> dict[tuple[int, int], tuple[list[bytes], list[bytes]]]:
    return {size: encode_key_then_delta("video/H264", *size, **H264_PARAMS)
            for size in ((640, 480), (1280, 720), (322, 242))}


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (322, 242)])
def test_h264_keyframe_detection_real_encoder(size, h264_streams) -> None:
    key, delta = h264_streams[size]
    assert probe(h264_keyframe_size, key[0]) == size
    for packet in key[1:]:
        units = _nal_units_independent(packet[12:])
        starts_idr = any(u[0] & 0x1F in (5, 7) for u in units)
        result = probe(h264_keyframe_size, packet)
        if starts_idr:  # a further IDR slice of the same access unit: keyframe, size unknown
            assert result in ((0, 0), size)
        else:
            assert result is None
    assert [probe(h264_keyframe_size, p) for p in delta] == [None] * len(delta)


@pytest.mark.parametrize("size", [(640, 480), (1280, 720), (322, 242)])
def test_h264_sps_size_from_real_encoder(size, h264_streams) -> None:
    key, _ = h264_streams[size]
    sps = [u for p in key for u in _nal_units_independent(p[12:]) if u and u[0] & 0x1F == 7]
    assert sps, "the keyframe carries no SPS"
    assert h264_sps_size(sps[0]) == size


def _x264_sps(width: int, height: int, pix_fmt: str, params: str) -> bytes:
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, pix_fmt
    cc.time_base = fractions.Fraction(1, 30)
    cc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": params}
    frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), dtype=np.uint8), format="rgb24")
    frame = frame.reformat(format=pix_fmt)
    frame.pts = 0
    stream = b"".join(bytes(p) for p in cc.encode(frame)) + b"".join(bytes(p) for p in cc.encode(None))
    for nal in stream.split(b"\x00\x00\x01"):
        nal = nal.rstrip(b"\x00")
        if nal and nal[0] & 0x1F == 7:
            return nal
    raise AssertionError("no SPS in the x264 output")


@pytest.mark.parametrize(
    "width,height,pix_fmt,params,profile_idc",
    [
        pytest.param(640, 480, "yuv420p", "keyint=30", 66, id="baseline"),
        pytest.param(642, 362, "yuv420p", "cabac=1:8x8dct=1", 100, id="high-cropped"),
        pytest.param(322, 242, "yuv420p", "8x8dct=1:cqm=jvt", 100, id="high-scaling-matrices"),
        pytest.param(322, 242, "yuv444p", "8x8dct=1", 244, id="high444-cropped"),
        pytest.param(322, 242, "yuv422p", "8x8dct=1", 122, id="high422-cropped"),
        pytest.param(322, 244, "yuv420p", "interlaced=1", 77, id="interlaced-cropped"),
        pytest.param(1280, 720, "yuv420p", "8x8dct=1:interlaced=1", 100, id="high-interlaced"),
    ],
)
def test_h264_sps_size_x264_variants(width, height, pix_fmt, params, profile_idc) -> None:
    sps = _x264_sps(width, height, pix_fmt, params)
    assert sps[1] == profile_idc, "x264 produced another profile than this case is about"
    assert h264_sps_size(sps) == (width, height)
    # inside an RTP packet as a single NAL unit it also marks a keyframe
    assert probe(h264_keyframe_size, wrap(sps)) == (width, height)


def test_h264_hand_built_packets(h264_streams) -> None:
    key, _ = h264_streams[(640, 480)]
    sps = next(u for u in _nal_units_independent(key[0][12:]) if u[0] & 0x1F == 7)
    idr = bytes((0x65,)) + bytes(30)
    non_idr = bytes((0x41,)) + bytes(30)
    assert probe(h264_keyframe_size, wrap(idr)) == (0, 0)  # single IDR NAL
    assert probe(h264_keyframe_size, wrap(non_idr)) is None
    assert probe(h264_keyframe_size, wrap(bytes((0x7C, 0x85)) + bytes(30))) == (0, 0)  # FU-A start, IDR
    assert probe(h264_keyframe_size, wrap(bytes((0x7C, 0x05)) + bytes(30))) is None  # FU-A middle, IDR
    assert probe(h264_keyframe_size, wrap(bytes((0x7C, 0x81)) + bytes(30))) is None  # FU-A start, non-IDR
    stap = bytes((0x78,)) + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(idr)) + idr
    assert probe(h264_keyframe_size, wrap(stap)) == (640, 480)
    stap_non_idr = bytes((0x78,)) + struct.pack("!H", len(non_idr)) + non_idr
    assert probe(h264_keyframe_size, wrap(stap_non_idr)) is None
    # a broken SPS still marks a keyframe (size unknown) and never raises
    assert probe(h264_keyframe_size, wrap(b"\x67\x42")) == (0, 0)
    assert probe(h264_keyframe_size, wrap(b"\x67")) == (0, 0)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x78", id="stap-a-header-only"),
        pytest.param(b"\x78\x00\x40\x67\x42", id="stap-a-size-overrun"),
        pytest.param(b"\x7c", id="fu-a-header-only"),
        pytest.param(b"\x00", id="nal-type-0"),
        pytest.param(b"\x7f\xff\xff", id="nal-type-31"),
    ],
)
def test_h264_garbage_never_raises(payload: bytes) -> None:
    result = probe(h264_keyframe_size, wrap(payload))
    assert result is None or result == (0, 0)


def test_h264_fuzz_never_raises() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        if payload and rng.random() < 0.5:
            payload = bytes((rng.choice((0x67, 0x78, 0x7C, 0x65)),)) + payload[1:]
        result = probe(h264_keyframe_size, wrap(payload))
        assert result is None or (isinstance(result, tuple) and len(result) == 2)


def test_extension_plan_one_byte_fast_path_matches_the_general_build() -> None:
    """ExtensionPlan.build's precomputed one-byte path gives exactly what build_extensions gives for the
    mapped elements plus the mid: random plans (one-byte ids or not) over random publisher elements, including
    values too long or empty for the one-byte form, repeated ids and more elements than one block usually has."""
    rng = random.Random(16)
    for _ in range(3000):
        ids = rng.sample(range(1, 256 if rng.random() < 0.2 else 15), rng.randrange(0, 5))
        mapping = {i: rng.randrange(1, 256 if rng.random() < 0.1 else 15) for i in ids}
        mid = None if rng.random() < 0.2 else (rng.randrange(1, 256 if rng.random() < 0.1 else 15),
                                               rng.randbytes(rng.choice((1, 2, 16, 17))))
        plan = ExtensionPlan(mapping, mid)
        elements = [(rng.choice(ids) if ids and rng.random() < 0.8 else rng.randrange(0, 256),
                     rng.randbytes(rng.choice((0, 1, 2, 3, 8, 16, 16, 17, 40))))
                    for _ in range(rng.randrange(0, 30 if rng.random() < 0.1 else 6))]
        out = [(mapping[i], v) for i, v in elements if i in mapping]
        expected = build_extensions(out + [mid] if out and mid else out) if out else build_extensions(
            [mid] if mid else [])
        assert plan.build(elements) == expected, (mapping, mid, elements)
