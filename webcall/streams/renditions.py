"""Shared renditions: one per (publication, codec, size profile), however many WebRTC players read it.

The first player whose offer lacks the publisher's video codec starts a rendition (transcode/rendition.py,
through the media plane: this process, or the publisher's worker); the last one leaving stops it `LINGER`
seconds later. A rendition that fails (the publication's video cannot be decoded) ends its players only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("webcall.streams")

LINGER = 3.0


@dataclass
class SharedRendition:
    key: tuple[int, str, tuple[int, int, int] | None]
    label: str
    handle: Any  # has .router (what players attach to), .close(), .stats(), .transcoding_video
    listeners: dict[Any, Callable[[str], None]] = field(default_factory=dict)
    linger: asyncio.TimerHandle | None = None
    failed: str | None = None

    @property
    def router(self) -> Any:
        return self.handle.router


class Renditions:
    def __init__(self, start: Callable[..., Any]) -> None:
        self._start = start  # (router, codec, on_failed, label, profile) -> a rendition
        self.renditions: dict[tuple[int, str, tuple[int, int, int] | None], SharedRendition] = {}
        self.started = 0

    def acquire(self, router: Any, codec: str, label: str, player: Any, on_failed: Callable[[str], None],
                profile: tuple[int, int, int] | None = None) -> SharedRendition:
        """`profile`: (width, height, bit/s) for a size rendition, None for the full size."""
        key = (id(router), codec, profile)
        entry = self.renditions.get(key)
        if entry is None or entry.failed is not None:
            entry = SharedRendition(key, label, None)
            entry.handle = self._start(router, codec, lambda info: self._failed(entry, info), label, profile)
            self.renditions[key] = entry
            self.started += 1
            log.info("rendition started %s codec=%s", label, codec)
        elif entry.linger is not None:
            entry.linger.cancel()
            entry.linger = None
        entry.listeners[player] = on_failed
        return entry

    def release(self, entry: SharedRendition, player: Any) -> None:
        entry.listeners.pop(player, None)
        if not entry.listeners and entry.linger is None and self.renditions.get(entry.key) is entry:
            entry.linger = asyncio.get_running_loop().call_later(LINGER, self._stop, entry)

    def _stop(self, entry: SharedRendition) -> None:
        entry.linger = None
        if entry.listeners:
            return
        if self.renditions.get(entry.key) is entry:
            del self.renditions[entry.key]
        log.info("rendition stopped %s stats=%s", entry.label, entry.handle.stats())
        entry.handle.close()

    def source_ended(self, router: Any) -> None:
        for key in [k for k in self.renditions if k[0] == id(router)]:
            entry = self.renditions.pop(key)
            if entry.linger is not None:
                entry.linger.cancel()
            entry.handle.close()

    def describe(self) -> list[dict[str, Any]]:
        return [{"label": e.label, "codec": e.key[1], "profile": e.key[2], "players": len(e.listeners),
                 "stats": e.handle.stats()}
                for e in self.renditions.values()]

    def _failed(self, entry: SharedRendition, info: str) -> None:
        entry.failed = info
        if self.renditions.get(entry.key) is entry:
            del self.renditions[entry.key]
        log.warning("rendition failed %s info=%s", entry.label, info)
        for on_failed in list(entry.listeners.values()):
            on_failed(info)
        entry.listeners.clear()
        entry.handle.close()
