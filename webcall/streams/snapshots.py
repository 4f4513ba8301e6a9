"""Snapshots of published streams: on demand, decoded off the event loop, bounded.

A request takes the packets of the latest keyframe onward from the producer's ring (references only),
and decodes them to a PNG in a small thread pool (`media/snapshot.py`). Requests for the same stream
share one job; at most `MAX_JOBS` streams are being snapshotted at once, and more are refused (and
counted) rather than queued. With no keyframe in the ring, the publisher is asked for one (PLI) and the
job waits for it up to `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ..media.snapshot import SnapshotError, decode_png, keyframe_packets
from .registry import Source

log = logging.getLogger("webcall.streams")

MAX_JOBS = 4
POLL_INTERVAL = 0.05

STREAM_GONE = "Stream not found"  # the words of the WCS protocol, and plain enough for any front end

__all__ = ["SnapshotError", "Snapshotter"]


class Snapshotter:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="webcall-snapshot")
        self._jobs: dict[Source, asyncio.Future[bytes]] = {}
        self.completed = self.failed = self.refused = 0

    async def take(self, source: Source) -> bytes:
        """The PNG of the stream's current picture; raises SnapshotError with the `info` to report."""
        job = self._jobs.get(source)
        if job is None:
            if len(self._jobs) >= MAX_JOBS:
                self.refused += 1
                raise SnapshotError("Too many snapshots in progress")
            job = asyncio.ensure_future(self._take(source))
            self._jobs[source] = job
            job.add_done_callback(lambda done, p=source: self._finished(p, done))
        # A requester that goes away (its session closed) must not cancel the others' job.
        return await asyncio.shield(job)

    def _finished(self, source: Source, job: asyncio.Future[bytes]) -> None:
        if self._jobs.get(source) is job:
            del self._jobs[source]
        if job.cancelled():
            return
        if job.exception() is None:  # also marks the exception retrieved when nobody waits any more
            self.completed += 1
        else:
            self.failed += 1

    async def _take(self, source: Source) -> bytes:
        track = source.router.tracks.get("video") if source.router is not None else None
        producer = track.producer if track is not None else None
        if producer is None:
            raise SnapshotError("Stream has no video")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        tried: tuple[int, int] | None = None  # (keyframes seen, packets) of the last decode attempt
        asked = False
        while True:
            if source.closed:
                raise SnapshotError(STREAM_GONE)
            packets = keyframe_packets(producer) if source.live else None
            attempt = (producer.keyframes, len(packets)) if packets else None
            if attempt is not None and attempt != tried:
                tried = attempt
                try:
                    png, width, height = await loop.run_in_executor(
                        self._executor, decode_png, producer.codec.name, packets)
                except SnapshotError:
                    pass  # the keyframe is not complete yet, or broken: wait for more
                except Exception:
                    log.exception("snapshot decoder error stream=%s", source.name)
                    raise SnapshotError("Snapshot failed") from None
                else:
                    log.info("snapshot taken stream=%s width=%d height=%d png_bytes=%d packets=%d", source.name,
                             width, height, len(png), len(packets))
                    return png
            if not asked:  # nothing usable in the ring: a fresh keyframe is the quickest way
                asked = True
                producer.request_keyframe(time.monotonic())
            if loop.time() >= deadline:
                raise SnapshotError("No keyframe yet")
            await asyncio.sleep(POLL_INTERVAL)

    def close(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
