"""Snapshots without sockets: aiortc-encoded RTP into a real Producer, decoded by media/snapshot.py."""

from __future__ import annotations

import asyncio
import io

import av
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from tests.support.media import make_pattern_frame, pattern_present, read_frame_counter
from webcall.media.producer import Producer
from webcall.media.snapshot import SnapshotError, decode_png, keyframe_packets
from webcall.protocol.sdp import Codec, Track
from webcall.media.router import Router, TrackRouter
from webcall.streams.snapshots import Snapshotter

MIME = {"VP8": "video/VP8", "H264": "video/H264"}


class FakePublication:
    """What the snapshotter reads of a stream core source (hashable by identity, like the real one)."""

    def __init__(self, p: Producer, label: str = "test") -> None:
        self.router, self.closed, self.live, self.name = Router({"video": TrackRouter(p)}), False, True, label


def rtp_packets(codec: str, frames: int, first_seq: int = 65530, keyframe_at: tuple[int, ...] = (0,)) -> list[bytes]:
    """`frames` pattern frames, encoded and packetized by aiortc, as RTP (marker on each frame's last packet)."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=MIME[codec], clockRate=90000, payloadType=96))
    out, seq = [], first_seq
    for i in range(frames):
        payloads, ts = encoder.encode(make_pattern_frame(i), force_keyframe=i in keyframe_at)
        for j, payload in enumerate(payloads):
            packet = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=ts, ssrc=1234,
                               payload=payload, marker=int(j == len(payloads) - 1))
            out.append(packet.serialize())
            seq += 1
    return out


def producer(codec: str) -> Producer:
    track = Track("1", "video", Codec(codec, 96, 90000, None, "", ("nack", "nack pli")), {}, 1234)
    return Producer(track, send_nack=lambda *a: None, send_keyframe_request=lambda p: None,
                    on_keyframe=lambda *a: None)


def open_png(png: bytes) -> av.VideoFrame:
    return next(av.open(io.BytesIO(png)).decode(video=0))


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_decodes_the_newest_complete_frame(codec: str) -> None:
    packets = rtp_packets(codec, 8)
    png, width, height = decode_png(codec, packets)
    frame = open_png(png)
    assert (width, height, frame.width, frame.height) == (640, 480, 640, 480)
    assert read_frame_counter(frame) == 7 and pattern_present(frame)
    # Without the last frame's marker packet, that frame is incomplete: the one before it is shown.
    assert read_frame_counter(open_png(decode_png(codec, packets[:-1])[0])) == 6


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_ring_walk_starts_at_the_latest_keyframe_and_stops_at_a_hole(codec: str) -> None:
    p = producer(codec)
    assert keyframe_packets(p) is None
    packets = rtp_packets(codec, 12, keyframe_at=(0, 5))  # sequence numbers wrap on the way
    hole = len(packets) - 3
    for i, packet in enumerate(packets):
        if i != hole:
            p.receive(packet, 1.0 + i / 100)
    got = keyframe_packets(p)
    assert got is not None and got[0][2:4] != packets[0][2:4]  # from the second keyframe
    assert got[-1] == packets[hole - 1]
    frame = open_png(decode_png(codec, got)[0])
    assert 5 <= read_frame_counter(frame) <= 11 and pattern_present(frame)


def test_no_keyframe_fails() -> None:
    packets = rtp_packets("VP8", 4)
    with pytest.raises(SnapshotError, match="No keyframe yet"):
        decode_png("VP8", packets[1:])  # the keyframe's first packet is missing
    with pytest.raises(SnapshotError, match="not supported"):
        decode_png("AV1", packets)


async def test_snapshotter_waits_for_a_keyframe_then_gives_up() -> None:
    asked = []
    p = producer("VP8")
    p._send_keyframe_request = lambda prod: asked.append(prod)
    publication = FakePublication(p)
    snapshots = Snapshotter(timeout=0.3)
    try:
        with pytest.raises(SnapshotError, match="No keyframe yet"):
            await snapshots.take(publication)
        assert len(asked) == 1  # the publisher was asked for a keyframe, once

        # A keyframe arriving while a job waits completes it; concurrent requests share the job.
        snapshots.timeout = 3.0
        jobs = [asyncio.create_task(snapshots.take(publication)) for _ in range(3)]
        await asyncio.sleep(0.1)
        for i, packet in enumerate(rtp_packets("VP8", 3)):
            p.receive(packet, 2.0 + i / 100)
        pngs = await asyncio.gather(*jobs)
        assert len(set(pngs)) == 1 and read_frame_counter(open_png(pngs[0])) == 2
        assert (snapshots.completed, snapshots.failed) == (1, 1)
    finally:
        snapshots.close()


async def test_snapshotter_refuses_beyond_its_job_limit() -> None:
    snapshots = Snapshotter(timeout=0.5)
    pubs = [FakePublication(producer("VP8"), f"p{i}") for i in range(5)]
    try:
        results = await asyncio.gather(*(snapshots.take(p) for p in pubs), return_exceptions=True)
        assert [str(r) for r in results].count("Too many snapshots in progress") == 1
        assert snapshots.refused == 1
    finally:
        snapshots.close()
