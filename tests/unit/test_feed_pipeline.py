"""transcode/pipeline.py's Feed on a synthetic publication (tests/support/rtpgen.py: aiortc's encoders and
packetizers), with its real thread and codecs: H264 is re-framed without an encoder, VP8 is transcoded, and a
stream that cannot be decoded fails the feed with an info string (its players end; nothing else)."""

from __future__ import annotations

import asyncio
import struct

import av
import pytest

from tests.support import rtpgen
from webcall.transcode.pipeline import Feed


async def run_feed(output: str, codec: str, frames: int = 20, garbage: bool = False, audio_from: int | None = 0):
    """`audio_from`: the video frame with which the publisher's audio starts (None: its audio track sends nothing)."""
    pub = rtpgen.FakePublisher(codec=codec, audio=True)
    got: list[tuple[str, bytes]] = []
    failed: list[str] = []
    feed = Feed(pub.routers, output, asyncio.get_running_loop(), got.extend, failed.append, label="t")
    feed.start()
    video = rtpgen.encode_video(codec, frames, width=320, height=240, keyframes=frozenset({0}))
    audio = rtpgen.encode_audio(frames * 2)
    vpk = rtpgen.packetize(video, rtpgen.PT[codec], rtpgen.VIDEO_SSRC)
    apk = rtpgen.packetize(audio, rtpgen.PT["opus"], rtpgen.AUDIO_SSRC)
    loop = asyncio.get_running_loop()
    for i in range(frames):
        for index, packet in vpk:
            if index == i:
                if garbage:  # a keyframe's bitstream without its start code: no decoder can take it
                    head = 12 + rtpgen.vp8_descriptor_length(packet[12:])
                    packet = packet[:head] + bytes((packet[head] & 0xFE,)) + b"\xff" * 40
                pub.producers["video"].receive(packet, loop.time())
        for index, packet in apk:
            if audio_from is not None and i >= audio_from and index in (2 * i, 2 * i + 1):
                pub.producers["audio"].receive(packet, loop.time())
        await asyncio.sleep(1 / 30)
    await asyncio.sleep(0.5)
    feed.close()
    feed.join(5)
    return feed, got, failed


async def test_h264_is_reframed_without_an_encoder() -> None:
    feed, got, failed = await run_feed("mse", "H264")
    assert not failed and feed.transcoding_video is False
    kinds = [k for k, _ in got]
    assert kinds.index("vconfig") < kinds.index("key") and "aconfig" in kinds and kinds.count("audio") > 10
    assert feed._output.encoder is None  # the transcoder never existed
    decoder = av.CodecContext.create("h264", "r")
    pictures = 0
    for kind, rec in got:
        if kind in ("key", "delta"):
            body = rec[9:]
            pos, annexb = 5, b""
            while pos < len(body):
                n = struct.unpack_from(">I", body, pos)[0]
                annexb += b"\x00\x00\x00\x01" + body[pos + 4 : pos + 4 + n]
                pos += 4 + n
            if kind == "key":
                cfg = next(r for k, r in got if k == "vconfig")[9 + 5:]
                sps_len = struct.unpack_from(">H", cfg, 6)[0]
                sps = cfg[8 : 8 + sps_len]
                pps = cfg[8 + sps_len + 3 :]
                annexb = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps + annexb
            pictures += len(decoder.decode(av.Packet(annexb)))
    assert pictures >= 15


@pytest.mark.parametrize("output", ["mse", "wsplayer"])
async def test_vp8_is_transcoded(output: str) -> None:
    feed, got, failed = await run_feed(output, "VP8")
    assert not failed and feed.transcoding_video is True
    assert sum(1 for k, _ in got if k in ("key", "delta")) >= 15
    assert feed.stats()["cpu_seconds"] > 0


def wsplayer_start_ms(got: list[tuple[str, bytes]]) -> tuple[float | None, float | None]:
    """The feed-clock ms of a WSPlayer feed's first keyframe and its first audio (both clocks are the feed's)."""
    key_ms = audio_ms = None
    for kind, packet in got:
        if kind == "key" and key_ms is None:
            key_ms = struct.unpack_from(">I", packet, 5)[0] / 90
        if kind == "audio" and audio_ms is None:
            audio_ms = struct.unpack_from(">I", packet, 5)[0] / 8
    return key_ms, audio_ms


async def test_a_wsplayer_feed_starts_its_video_once_its_audio_has_started() -> None:
    # the publisher's audio starts 10 frames (≈ 330 ms) after its video: the SDK's receiver would drop video that
    # starts more than 30 ms before the audio and wait another second, so the first picture comes after the audio
    feed, got, failed = await run_feed("wsplayer", "VP8", frames=30, audio_from=10)
    assert not failed
    key_ms, audio_ms = wsplayer_start_ms(got)
    assert key_ms is not None and audio_ms is not None and audio_ms > 250, (key_ms, audio_ms)
    assert key_ms >= audio_ms - 10, (key_ms, audio_ms)
    assert sum(1 for k, _ in got if k in ("key", "delta")) >= 10  # and it goes on from there


async def test_a_wsplayer_feed_whose_audio_never_starts_shows_its_video_after_a_wait() -> None:
    feed, got, failed = await run_feed("wsplayer", "VP8", frames=30, audio_from=None)
    assert not failed
    key_ms, audio_ms = wsplayer_start_ms(got)
    assert audio_ms is None and key_ms is not None
    assert key_ms >= feed._output.AUDIO_WAIT_MS - 50, key_ms
    assert sum(1 for k, _ in got if k in ("key", "delta")) >= 8


async def test_a_stream_that_cannot_be_decoded_fails_the_feed_with_an_info() -> None:
    feed, got, failed = await run_feed("mse", "VP8", frames=5, garbage=True)
    assert failed and failed[0].startswith("Transcoding failed"), failed
    assert not any(k in ("key", "delta") for k, _ in got)
