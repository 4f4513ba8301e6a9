"""The rate sampler: once per rate interval, every WCS stream updates its rates and tells its client.

The sampler takes a slice of the streams (by id) at each of a few wake-ups per interval, so each stream gets one
sample (and one inbound/outboundVideoRate message) per interval and a thousand players' messages are never
built in one loop iteration: that would hold up the event loop's other work (handshakes, the port's take-ins)
for over ten milliseconds once a second. Up to STREAMS_PER_SLOT streams it wakes once per interval: every
wake-up of the process costs about what forwarding a packet does.

Before each slice it asks the media plane to take in what its ingest threads queued (`refresh`), so the
publishers' counters it reads are as of now, not of the media port's last tick.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger("webcall.wcs")

SAMPLE_SLOTS = 10  # the sampler wakes at most this many times per rate interval,
# and as few as keep each wake-up's slice to about this many streams. A wake-up and its first streams, run
# cold, cost ≈ 0.3 ms of CPU; 150 streams are ≈ 2 ms of Python and their writes, a burst the media's own thread
# (which forwards without the event loop) does not wait for.
STREAMS_PER_SLOT = 150


class Sampled(Protocol):
    media_session_id: str
    label: str

    def sample(self, now: float) -> None: ...


class RateSampler:
    def __init__(self, interval: float, streams: Callable[[], Iterable[Sampled]],
                 refresh: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.streams = streams
        self.refresh = refresh  # brings the media counters up to date (MediaPlane.take_in), where there is one
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="rate-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _loop(self) -> None:
        while True:
            slices = self.slices()  # streams created from now on are sampled from the next interval on
            for part in slices:
                await asyncio.sleep(self.interval / len(slices))
                self.sample(time.monotonic(), part)

    def slices(self) -> list[list[Sampled]]:
        """Every stream in one of the interval's slices, by its id: one slice per STREAMS_PER_SLOT streams, at
        least one and at most SAMPLE_SLOTS."""
        streams = list(self.streams())
        count = min(SAMPLE_SLOTS, max(1, math.ceil(len(streams) / STREAMS_PER_SLOT)))
        slices: list[list[Sampled]] = [[] for _ in range(count)]
        for stream in streams:
            slices[zlib.crc32(stream.media_session_id.encode()) % count].append(stream)
        return slices

    def sample(self, now: float, streams: Iterable[Sampled] | None = None) -> None:
        """Sample these streams (default: all of them)."""
        if self.refresh is not None:
            try:
                self.refresh()
            except Exception:  # the rates are then a tick old, as they were before the refresh
                log.exception("media refresh before rate sampling failed")
        for stream in self.streams() if streams is None else streams:
            try:
                stream.sample(now)
            except Exception:  # one stream's bug must not stop everyone's rates
                log.exception("rate sampling failed %s", stream.label)
