"""A Python reader that works at its own pace: a bounded queue between a track router and an asyncio consumer.

The router calls readers synchronously on the packet path, so a reader that awaits anything (a socket, a
muxer, a transcoder's input) must not be called directly. `QueuedReader` takes the packet in O(1) and hands it
to `consume` from its own task. When the consumer falls behind and the queue is full, the reader drops: for
video everything until the next keyframe (a decoder cannot use what follows a gap anyway), for audio the
packet itself. Drops are counted; the publisher and every other reader never notice (MediaMTX gives each
reader its own ring for the same reason).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("webcall.media")

DEFAULT_LIMIT = 1024  # packets: ≈ 7 s of 600 kbps video


class QueuedReader:
    def __init__(self, consume: Callable[[bytes], Awaitable[None]], *, limit: int = DEFAULT_LIMIT,
                 resync_on_keyframe: bool = True, name: str = "reader") -> None:
        self._consume = consume
        self._limit = limit
        self._resync = resync_on_keyframe
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._skipping = False  # dropping until the next keyframe
        self.dropped = 0
        self.errors = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def __call__(self, packet: bytes, keyframe: bool) -> None:
        """The reader the router calls (media/router.py): O(1), never blocks."""
        if self._skipping:
            if not keyframe:
                self.dropped += 1
                return
            self._skipping = False
        if len(self._queue) >= self._limit:
            self.dropped += 1
            if self._resync:
                self._queue.clear()  # what is queued is useless without what we drop now
                self._skipping = True
            return
        self._queue.append(packet)
        self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._consume(queue.popleft())
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer's bug ends nothing but its own packet
                self.errors += 1
                log.exception("queued reader failed on a packet")

    def close(self) -> None:
        self._task.cancel()
        self._queue.clear()
