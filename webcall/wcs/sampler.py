"""The rate sampler: once per rate interval, every WCS stream updates its rates and tells its client.

The sampler takes a tenth of the streams every tenth of the interval (sliced by id), so each stream gets one
sample (and one inbound/outboundVideoRate message) per interval and a thousand players' messages are never
built in one loop iteration: that would hold up forwarding for milliseconds once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol

log = logging.getLogger("webcall.wcs")

SAMPLE_SLOTS = 10  # the sampler wakes this many times per rate interval


class Sampled(Protocol):
    media_session_id: str
    label: str

    def sample(self, now: float) -> None: ...


class RateSampler:
    def __init__(self, interval: float, streams: Callable[[], Iterable[Sampled]]) -> None:
        self.interval = interval
        self.streams = streams
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
        slot = 0
        slices: list[list[Sampled]] = []
        while True:
            await asyncio.sleep(self.interval / SAMPLE_SLOTS)
            if slot == 0:
                slices = self.slices()  # streams created since are sampled from the next interval on
            self.sample(time.monotonic(), slices[slot])
            slot = (slot + 1) % SAMPLE_SLOTS

    def slices(self) -> list[list[Sampled]]:
        """Every stream in one of SAMPLE_SLOTS slices, by its id."""
        slices: list[list[Sampled]] = [[] for _ in range(SAMPLE_SLOTS)]
        for stream in self.streams():
            slices[zlib.crc32(stream.media_session_id.encode()) % SAMPLE_SLOTS].append(stream)
        return slices

    def sample(self, now: float, streams: Iterable[Sampled] | None = None) -> None:
        """Sample these streams (default: all of them)."""
        for stream in self.streams() if streams is None else streams:
            try:
                stream.sample(now)
            except Exception:  # one stream's bug must not stop everyone's rates
                log.exception("rate sampling failed %s", stream.label)
