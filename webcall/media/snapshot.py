"""Snapshots: the current picture of a published stream, decoded on demand from the producer's ring.

Never on the forwarding path. `keyframe_packets()` runs on the event loop but only copies references out
of the ring; `decode_png()` (depacketize, decode from the latest keyframe to the newest complete frame,
encode PNG) is CPU work for an executor thread — PyAV releases the GIL while it decodes and encodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import av
from aiortc.codecs.h264 import h264_depayload

from .rtp import split, vp8_payload_offset

if TYPE_CHECKING:
    from .producer import Producer

DECODERS = {"VP8": "vp8", "H264": "h264"}


class SnapshotError(Exception):
    """No picture could be made; the message is the `info` sent back to the client."""


def keyframe_packets(producer: Producer) -> list[bytes] | None:
    """The packets from the latest keyframe to the newest one, in order, up to the first hole.

    None when there is no keyframe in the ring (none seen yet, or it has been overwritten).
    """
    gop = producer.current_gop()
    return [packet for _, packet in gop] if gop else None


def _vp8_payload(packet: bytes, start: int, end: int) -> bytes:
    return packet[vp8_payload_offset(packet, start)[0] : end]


def _h264_payload(packet: bytes, start: int, end: int) -> bytes:
    return h264_depayload(packet[start:end])


def _frames(codec: str, packets: list[bytes]) -> list[bytes]:
    """Depacketized frames (one per RTP timestamp), dropping a trailing frame without its marker packet."""
    depay = _vp8_payload if codec == "VP8" else _h264_payload
    frames: list[bytes] = []
    parts: list[bytes] = []
    current_ts = None
    complete = False
    for packet in packets:
        try:
            _, start, end = split(packet)
            ts = packet[4:8]
            if ts != current_ts:
                if parts:
                    frames.append(b"".join(parts))
                parts, current_ts = [], ts
            parts.append(depay(packet, start, end))
        except (ValueError, IndexError):
            break  # a malformed packet ends what can be decoded
        complete = bool(packet[1] & 0x80)
    if parts and complete:
        frames.append(b"".join(parts))
    return frames


def decode_png(codec: str, packets: list[bytes]) -> tuple[bytes, int, int]:
    """(PNG, width, height) of the last frame decodable from `packets` (which start at a keyframe)."""
    name = DECODERS.get(codec.upper())
    if name is None:
        raise SnapshotError(f"Snapshots of {codec} are not supported")
    decoder = av.CodecContext.create(name, "r")
    picture = None
    for data in _frames(codec.upper(), packets):
        try:
            for frame in decoder.decode(av.Packet(data)):
                picture = frame
        except av.FFmpegError:
            break  # a broken frame: everything after it references it
    try:
        for frame in decoder.decode(None):  # flush frames the decoder held back
            picture = frame
    except av.FFmpegError:
        pass
    if picture is None:
        raise SnapshotError("No keyframe yet")
    return encode_png(picture), picture.width, picture.height


def encode_png(frame: av.VideoFrame) -> bytes:
    rgb = frame.reformat(format="rgb24")
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = rgb.width, rgb.height, "rgb24"
    packets = encoder.encode(rgb) + encoder.encode(None)
    return b"".join(bytes(p) for p in packets)
