"""What a shared feed costs (transcode/pipeline.py): CPU per stream and the latency it adds, per output.

A synthetic 640x480 @ 30 fps publication (the counter pattern encoded by aiortc's own VP8/H264 encoders, with
its Opus tone; tests/support/rtpgen.py) is pre-encoded, then pushed in real time into a real `Feed` (its thread,
its codecs) for --seconds. Measured:

* CPU: the feed thread's own CPU time (time.thread_time) over the run, as a share of one core;
* added latency per video frame: from the frame's last packet entering the feed's queue to its chunk being
  handed to the event loop (reordering, decoding, encoding, framing), p50/p95. Frames and chunks are paired in
  order, so not for WSPlayer, which leaves out pictures beyond 25 a second (its latency is reported as null).

    .venv/bin/python tools/measure_feeds.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import rtpgen  # noqa: E402
from webcall.transcode.pipeline import Feed  # noqa: E402

CASES = [("mse", "H264"), ("mse", "VP8"), ("wsplayer", "VP8"), ("rtp-H264", "VP8")]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def measure(output: str, codec: str, seconds: float, video: list, audio: list) -> dict:
    pub = rtpgen.FakePublisher(codec=codec, audio=output != "rtp-H264")
    loop = asyncio.get_running_loop()
    emitted: list[float] = []

    def emit(chunks: list) -> None:
        now = time.monotonic()
        for kind, data in chunks:
            if kind in ("key", "delta") and (not output.startswith("rtp") or data[1] & 0x80):  # rtp: a frame's end
                emitted.append(now)

    feed = Feed(pub.routers, output, loop, emit, lambda info: print("FAILED", info), label=f"{output}-{codec}")
    feed.start()
    vpk = rtpgen.packetize(video, rtpgen.PT[codec], rtpgen.VIDEO_SSRC)
    apk = rtpgen.packetize(audio, rtpgen.PT["opus"], rtpgen.AUDIO_SSRC)
    by_frame: dict[int, list[bytes]] = {}
    for index, packet in vpk:
        by_frame.setdefault(index, []).append(packet)
    audio_by_frame: dict[int, list[bytes]] = {}
    for index, packet in apk:
        audio_by_frame.setdefault(index, []).append(packet)
    frames = int(seconds * 30)
    pushed: list[float] = []
    start = time.monotonic()
    cpu0 = None
    next_audio = 0
    for i in range(frames):
        wait = start + i / 30 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        for packet in by_frame[i % len(video)]:
            pub.producers["video"].receive(packet, loop.time())
        pushed.append(time.monotonic())
        while "audio" in pub.producers and next_audio < (i + 1) * 50 // 30:  # 20 ms Opus packets, in step
            for packet in audio_by_frame.get(next_audio % len(audio), []):
                pub.producers["audio"].receive(packet, loop.time())
            next_audio += 1
        if i == 30:
            cpu0 = (feed.cpu_seconds, time.monotonic())  # after the codecs' set-up
    await asyncio.sleep(1.0)
    assert cpu0 is not None
    cpu, at = feed.cpu_seconds - cpu0[0], time.monotonic() - 1.0 - cpu0[1]
    feed.close()
    feed.join(5)
    stats = feed.stats()
    lat = [(e - p) * 1000 for p, e in zip(pushed[30:], emitted[30:])] if output != "wsplayer" else []
    return {"output": output, "input": codec, "seconds": round(at, 1), "cpu_core_share": round(cpu / at, 3),
            "latency_ms_p50": round(pct(lat, 50), 1) if lat else None,
            "latency_ms_p95": round(pct(lat, 95), 1) if lat else None,
            "video_chunks": len(emitted), "dropped": stats["dropped"]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = []
    for output, codec in CASES:
        # Distinct pictures for the whole run: a loop of a few frames would be cheaper to encode than live video.
        count = int(args.seconds * 30) + 30
        video = rtpgen.encode_video(codec, count, width=640, height=480, keyframes=frozenset(range(0, count, 300)))
        audio = rtpgen.encode_audio(int(args.seconds * 50) + 100)
        results.append(await measure(output, codec, args.seconds, video, audio))
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
