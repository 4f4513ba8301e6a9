"""Self-tests of the e2e harness (tests/support) that need no server."""

from __future__ import annotations

import asyncio
import json
import time

import av
import numpy as np
import pytest
from aiohttp import web
from aiortc.codecs import CODECS, depayload, get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame

from tests.support.media import (
    FrameAnalysis,
    PatternVideoTrack,
    ToneAudioTrack,
    analyze_frame,
    audio_rms,
    audio_samples,
    dominant_frequency,
    is_black,
    make_pattern_frame,
    pattern_present,
    read_frame_counter,
)
from tests.support.peers import (
    LoopbackViolation,
    assert_loopback_sdp,
    sdp_candidate_addresses,
    strip_candidates,
    use_loopback_only,
)
from tests.support.wcs_client import WcsClient, WcsClosed, WcsTimeout

# --------------------------------------------------------------------------------------------
# (a) video pattern survives VP8 / H264 at ~600 kbps


def _codec(mime: str):
    return next(c for c in CODECS["video"] if c.mimeType == mime)


def _round_trip(mime: str, n: int, busy: bool, bitrate: int = 600_000) -> tuple[list[tuple[int, FrameAnalysis]], int]:
    """Encode frames 0..n-1 with aiortc's encoder, depayload, decode; returns (analyses, bytes)."""
    codec = _codec(mime)
    encoder, decoder = get_encoder(codec), get_decoder(codec)
    encoder.target_bitrate = bitrate  # type: ignore[attr-defined]  # Vp8Encoder/H264Encoder
    results: list[tuple[int, FrameAnalysis]] = []
    total = 0
    for i in range(n):
        payloads, timestamp = encoder.encode(make_pattern_frame(i, busy=busy), force_keyframe=(i == 0))
        total += sum(len(p) for p in payloads)
        data = b"".join(depayload(codec, p) for p in payloads)
        for frame in decoder.decode(JitterFrame(data, timestamp)) if data else []:
            assert isinstance(frame, av.VideoFrame)
            results.append((i, analyze_frame(frame)))
    return results, total


@pytest.mark.parametrize("busy", [False, True], ids=["plain", "busy"])
@pytest.mark.parametrize("mime", ["video/VP8", "video/H264"])
def test_pattern_survives_codec(mime: str, busy: bool) -> None:
    n = 60
    results, total = _round_trip(mime, n, busy)
    good = sum(1 for i, a in results if a.counter == i and a.pattern_present and not a.is_black)
    wrong = [(i, a.counter) for i, a in results if a.counter is not None and a.counter != i]
    assert good >= 0.95 * n, f"{mime}: {good}/{n} frames intact"
    assert not wrong, f"misread counters: {wrong[:5]}"
    if busy:  # the noise band must make the encoder actually spend bits (multi-packet frames)
        assert total * 8 / (n / 30) > 300_000


def test_pattern_reader_scales_and_rejects() -> None:
    frame = make_pattern_frame(1234)
    assert read_frame_counter(frame) == 1234 and pattern_present(frame) and not is_black(frame)
    # the layout is relative, so a server-side downscale still reads
    small = frame.reformat(width=320, height=240)
    assert read_frame_counter(small) == 1234 and pattern_present(small)
    big = make_pattern_frame(77, 1280, 720)
    assert read_frame_counter(big) == 77 and pattern_present(big)
    assert read_frame_counter(make_pattern_frame(65536 + 5)) == 5  # 16-bit wrap
    # square in the wrong place -> counter readable but pattern not present
    other = make_pattern_frame(10).to_ndarray(format="rgb24")
    other[200:400] = make_pattern_frame(50).to_ndarray(format="rgb24")[200:400]
    shifted = av.VideoFrame.from_ndarray(other, format="rgb24").reformat(format="yuv420p")
    assert read_frame_counter(shifted) == 10 and not pattern_present(shifted)
    black = av.VideoFrame.from_ndarray(np.zeros((480, 640, 3), np.uint8), format="rgb24")
    assert is_black(black) and read_frame_counter(black) is None and not pattern_present(black)
    noise = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    noisy = av.VideoFrame.from_ndarray(noise, format="rgb24")
    assert read_frame_counter(noisy) is None and not is_black(noisy)


def test_pattern_track_paced_and_counting() -> None:
    async def run() -> tuple[list[int | None], list[int | None], float]:
        track = PatternVideoTrack(320, 240, fps=30)
        t0 = time.monotonic()
        frames = [await track.recv() for _ in range(4)]
        elapsed = time.monotonic() - t0
        track.stop()
        return [read_frame_counter(f) for f in frames], [f.pts for f in frames], elapsed

    counters, pts, elapsed = asyncio.run(run())
    assert counters == [0, 1, 2, 3]
    assert pts == [0, 3000, 6000, 9000]  # 90 kHz clock
    assert 0.08 <= elapsed < 0.5  # 3 frame intervals of real-time pacing


# --------------------------------------------------------------------------------------------
# (b) audio


def test_tone_and_silence() -> None:
    tone = ToneAudioTrack()
    frame = tone.make_frame()
    assert frame.samples == 960 and frame.sample_rate == 48000
    assert audio_rms(frame) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)
    samples = np.concatenate([audio_samples(tone.make_frame()) for _ in range(10)])
    assert dominant_frequency(samples) == pytest.approx(440, abs=2)
    silent = ToneAudioTrack(amplitude=0.0).make_frame()
    assert audio_rms(silent) < 1e-6
    # planar/float formats are handled too
    for fmt in ("fltp", "s16p"):
        resampler = av.AudioResampler(format=fmt, layout="stereo", rate=48000)
        converted = resampler.resample(ToneAudioTrack().make_frame())[0]
        assert audio_rms(converted) == pytest.approx(0.212, abs=0.01)


def test_tone_survives_opus() -> None:
    audio_codec = next(c for c in CODECS["audio"] if c.mimeType == "audio/opus")
    encoder, decoder = get_encoder(audio_codec), get_decoder(audio_codec)
    tone = ToneAudioTrack()
    decoded: list[av.AudioFrame] = []
    for _ in range(50):
        payloads, ts = encoder.encode(tone.make_frame())
        for p in payloads:
            decoded += [f for f in decoder.decode(JitterFrame(p, ts)) if isinstance(f, av.AudioFrame)]
    assert len(decoded) >= 45
    rms = [audio_rms(f) for f in decoded[5:]]
    assert min(rms) > 0.15
    samples = np.concatenate([audio_samples(f) for f in decoded[5:]])
    assert dominant_frequency(samples) == pytest.approx(440, abs=3)


# --------------------------------------------------------------------------------------------
# (c) SDP helpers

_SDP_WITH_CANDIDATES = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 40001 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 127.0.0.1",
        "a=mid:0",
        "a=rtpmap:96 opus/48000/2",
        "a=candidate:abc 1 udp 2130706431 127.0.0.1 40001 typ host",
        "a=candidate:def 1 udp 2130706431 192.168.1.5 40002 typ host",
        "a=end-of-candidates",
        "a=ice-ufrag:x",
        "m=video 40003 UDP/TLS/RTP/SAVPF 97",
        "c=IN IP4 127.0.0.1",
        "a=mid:1",
        "a=candidate:ghi 1 udp 2130706431 127.0.0.1 40003 typ host",
        "a=end-of-candidates",
        "a=rtpmap:97 VP8/90000",
    ]
) + "\r\n"


def test_strip_candidates() -> None:
    out = strip_candidates(_SDP_WITH_CANDIDATES)
    assert "a=candidate" not in out and "a=end-of-candidates" not in out
    assert out.endswith("\r\n") and "\n" not in out.replace("\r\n", "")
    kept = [line for line in _SDP_WITH_CANDIDATES.splitlines() if not line.startswith(("a=candidate", "a=end-of"))]
    assert out.splitlines() == kept
    reset = strip_candidates(_SDP_WITH_CANDIDATES, reset_connection=True)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 96" in reset and "c=IN IP4 0.0.0.0" in reset
    assert "127.0.0.1" not in reset


def test_loopback_checks() -> None:
    assert sdp_candidate_addresses(_SDP_WITH_CANDIDATES) == ["127.0.0.1", "192.168.1.5", "127.0.0.1"]
    with pytest.raises(LoopbackViolation):
        assert_loopback_sdp(_SDP_WITH_CANDIDATES)
    assert_loopback_sdp(strip_candidates(_SDP_WITH_CANDIDATES))
    import aioice.ice

    original = aioice.ice.get_host_addresses
    with use_loopback_only():
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses is original


# --------------------------------------------------------------------------------------------
# WcsClient against a tiny in-process WebSocket server


def test_wcs_client_basics() -> None:
    async def run() -> None:
        pongs: list[dict] = []
        received: list[dict] = []

        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for m in ws:
                msg = json.loads(m.data)
                received.append(msg)
                if msg["message"] == "connection":
                    user_data = dict(msg["data"][0], authToken="/t:1/s:2")
                    await ws.send_str(json.dumps({"message": "getUserData", "data": [user_data]}))
                    for _ in range(2):
                        await ws.send_str('{"message":"ping","data":[]}')
                    await ws.send_str("not json")
                elif msg["message"] == "pong":
                    pongs.append(msg)
                elif msg["message"] == "bye":
                    await ws.close()
            return ws

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            client = await WcsClient.connect(f"ws://127.0.0.1:{port}")
            assert client.auth_token == "/t:1/s:2"
            first, second = await client.wait_for("ping"), await client.wait_for("ping")
            assert first is not second  # each message is returned by wait_for once
            raw = await client.wait_for(lambda m: m.get("raw") == "not json")
            assert raw["message"] is None
            assert [m["message"] for m in [await client.recv() for _ in range(3)]] == ["getUserData", "ping", "ping"]
            with pytest.raises(WcsTimeout):
                await client.wait_for("nothing", timeout=0.2)
            conn = received[0]["data"][0]
            assert received[0]["message"] == "connection"
            assert conn["appKey"] == "defaultApp" and conn["clientVersion"] == "2.0"
            await client.send("bye", None)
            await client.wait_closed(timeout=5)
            assert [p["data"] for p in pongs] == [[None], [None]]
            with pytest.raises(WcsClosed):
                await client.wait_for("nothing", timeout=1)
            await client.close()
            await client.close()  # idempotent
            assert len(client.messages) == 4
        finally:
            await runner.cleanup()
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not leftover, leftover

    asyncio.run(run())
