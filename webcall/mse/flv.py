"""The MSE media socket's binary records (spec §11.1), sans-I/O.

The SDK's demuxer reads, back to back in one WebSocket frame, records of

    u8 tagType (9 video, 8 audio) · i32 timestamp ms · i32 payload length · payload

Video payloads are FLV AVC VIDEODATA bodies: 0x17/0x27, AVCPacketType (0 = avcC, 1 = NALUs), 3 bytes of
composition time, then the avcC or 4-byte length-prefixed NAL units. Audio payloads are one AACPacketType
byte (0 = AudioSpecificConfig, 1 = raw frame) and the data — with no FLV SoundFormat byte in front.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VIDEO = 9
AUDIO = 8
_HEAD = struct.Struct("!BiI")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
NAL_LENGTH_SIZE = 4

# AAC sampling frequency index (ISO 14496-3 1.6.3.4)
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def record(tag: int, ts_ms: int, payload: bytes) -> bytes:
    """One record: the header and the payload. The timestamp wraps like an i32 (24 days in)."""
    ts = ((ts_ms + 0x80000000) & 0xFFFFFFFF) - 0x80000000
    return _HEAD.pack(tag, ts, len(payload)) + payload


def records(chunk: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(tag, timestamp, payload) of each record of a chunk (records back to back, as a feed sends them)."""
    pos = 0
    while pos + _HEAD.size <= len(chunk):
        tag, ts, size = _HEAD.unpack_from(chunk, pos)
        start = pos + _HEAD.size
        pos = start + size
        yield tag, ts, chunk[start:pos]


def is_media(tag: int, payload: bytes) -> bool:
    """An AAC raw frame or AVC NAL units, not a decoder configuration (AudioSpecificConfig, avcC)."""
    return (payload[:1] if tag == AUDIO else payload[1:2]) == b"\x01"


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B byte stream (3- or 4-byte start codes), without the start codes."""
    nals: list[bytes] = []
    i, n = 0, len(data)
    start = -1
    while i + 2 < n:
        if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1:
            if start >= 0:
                end = i - 1 if i > 0 and data[i - 1] == 0 else i
                nals.append(data[start:end])
            i += 3
            start = i
            continue
        i += 1
    if start >= 0 and start < n:
        nals.append(data[start:])
    return [nal for nal in nals if nal]


def avc_decoder_config(sps: bytes, pps: bytes) -> bytes:
    """AVCDecoderConfigurationRecord (ISO 14496-15 5.2.4.1) for one SPS and one PPS, 4-byte NAL lengths."""
    if len(sps) < 4:
        raise ValueError("SPS too short")
    return (bytes((1, sps[1], sps[2], sps[3], 0xFC | (NAL_LENGTH_SIZE - 1), 0xE0 | 1))
            + _U16.pack(len(sps)) + sps + b"\x01" + _U16.pack(len(pps)) + pps)


def avc_sequence_header(ts_ms: int, sps: bytes, pps: bytes) -> bytes:
    return record(VIDEO, ts_ms, b"\x17\x00\x00\x00\x00" + avc_decoder_config(sps, pps))


def avc_frame(ts_ms: int, nals: list[bytes], keyframe: bool) -> bytes:
    """An access unit as length-prefixed NAL units (SPS/PPS/AUD left out: the avcC carries the parameters)."""
    body = b"".join(_U32.pack(len(nal)) + nal for nal in nals if nal[0] & 0x1F not in (7, 8, 9))
    return record(VIDEO, ts_ms, (b"\x17\x01" if keyframe else b"\x27\x01") + b"\x00\x00\x00" + body)


def codec_string(sps: bytes) -> str:
    """The `avc1.PPCCLL` string the SDK derives from the avcC."""
    return "avc1.%02X%02X%02X" % (sps[1], sps[2], sps[3])


def audio_specific_config(rate: int, channels: int, object_type: int = 2) -> bytes:
    """A 2-byte AudioSpecificConfig (AAC-LC by default)."""
    index = AAC_RATES.index(rate)
    value = (object_type << 11) | (index << 7) | (channels << 3)
    return _U16.pack(value)


def aac_sequence_header(ts_ms: int, asc: bytes) -> bytes:
    return record(AUDIO, ts_ms, b"\x00" + asc)


def aac_frame(ts_ms: int, frame: bytes) -> bytes:
    return record(AUDIO, ts_ms, b"\x01" + frame)
