"""The stream core's seam: the registry's two verbs, and readers that fail or stall without hurting anyone."""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.support.rtpgen import FakePublisher
from webcall.media.readers import QueuedReader
from webcall.streams.registry import EndReason, NameInUse, StreamRegistry

VP8_KEYFRAME = bytes([0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01])  # 640x480
VP8_DELTA = bytes([0x10, 0x01, 0x00, 0x00])


def video_packet(seq: int, ts: int, payload: bytes, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0x80 | 96, seq & 0xFFFF, ts, ssrc) + payload


class Source:
    def __init__(self, name: str, router=None) -> None:
        self.name, self.router, self.width, self.height = name, router, 0, 0
        self.closed = False
        self.live = True


class Reader:
    def __init__(self, fail: bool = False) -> None:
        self.ended: list[EndReason] = []
        self.sizes: list[tuple[int, int]] = []
        self.fail = fail

    def on_source_ended(self, reason: EndReason) -> None:
        self.ended.append(reason)
        if self.fail:
            raise RuntimeError("reader bug")

    def on_video_size(self, width: int, height: int) -> None:
        self.sizes.append((width, height))


def test_registry_publish_read_and_end() -> None:
    registry = StreamRegistry()
    source = Source("cam")
    registry.publish(source)
    with pytest.raises(NameInUse):
        registry.publish(Source("cam"))
    assert registry.read("nothing", Reader()) is None
    broken, healthy = Reader(fail=True), Reader()
    assert registry.read("cam", broken) is source and registry.read("cam", healthy) is source
    registry.video_size(source, 640, 480)
    registry.video_size(Source("cam"), 1, 1)  # not the holder of the name: nobody hears it
    assert healthy.sizes == [(640, 480)]
    registry.unpublish(Source("cam"), EndReason.TERMINATED)  # not the holder: nothing happens
    assert registry.find("cam") is source and healthy.ended == []
    registry.unpublish(source, EndReason.PUBLISHER_DISCONNECTED)
    # A reader that raises while being told does not keep the next one from hearing it.
    assert broken.ended == healthy.ended == [EndReason.PUBLISHER_DISCONNECTED]
    assert registry.find("cam") is None and registry.readers("cam") == []
    registry.publish(Source("cam"))  # the name is free again


def test_a_reader_that_raises_is_detached_and_nobody_else_notices() -> None:
    pub = FakePublisher("VP8", audio=False)
    router, producer = pub.routers["video"], pub.producers["video"]
    got: list[bytes] = []
    calls = 0

    def broken(packet: bytes, keyframe: bool) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("reader bug")

    router.add_reader(broken)
    router.add_reader(lambda packet, keyframe: got.append(packet))
    ssrc = producer.ssrc
    for seq in range(10):
        producer.receive(video_packet(seq, seq * 3000, VP8_KEYFRAME if seq == 0 else VP8_DELTA, ssrc), seq / 30)
    assert calls == 1 and router.reader_errors == 1  # called once, then detached
    assert len(got) == 10 and producer.packets == 10


async def test_a_stalled_queued_reader_drops_to_the_next_keyframe_and_hurts_nobody() -> None:
    pub = FakePublisher("VP8", audio=False)
    router, producer = pub.routers["video"], pub.producers["video"]
    release = asyncio.Event()
    consumed: list[bytes] = []

    async def slow(packet: bytes) -> None:
        await release.wait()  # stalls until the test lets it go
        consumed.append(packet)

    stalled = QueuedReader(slow, limit=16)
    healthy: list[bytes] = []
    router.add_reader(stalled)
    router.add_reader(lambda packet, keyframe: healthy.append(packet))
    ssrc = producer.ssrc
    sent = []
    for seq in range(40):
        payload = VP8_KEYFRAME if seq in (0, 30) else VP8_DELTA
        sent.append(video_packet(seq, seq * 3000, payload, ssrc))
        producer.receive(sent[-1], seq / 30)
        await asyncio.sleep(0)
    assert healthy == sent  # everyone else got every packet, in order
    assert stalled.dropped > 0
    release.set()
    for _ in range(1000):
        await asyncio.sleep(0)
        if consumed and struct.unpack_from("!H", consumed[-1], 2)[0] == 39:
            break
    # After the stall it resumed at the keyframe of seq 30, not in the middle of a picture.
    resumed = [struct.unpack_from("!H", p, 2)[0] for p in consumed]
    assert 30 in resumed and resumed == sorted(resumed)
    tail = resumed[resumed.index(30):]
    assert tail == list(range(30, 40))
    stalled.close()
