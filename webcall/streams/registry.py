"""The stream core: stream names, who publishes each, and who reads it — in no protocol's terms.

Two verbs, in the spirit of MediaMTX's path manager and mediasoup's Router: `publish` a source under a name,
and `read` a name with a reader. A front end (the WCS WebSocket today; WHIP, relays and muxers next) turns its
protocol into these verbs and the core's events (`on_source_ended`, `on_video_size`) into its protocol.

A source offers its media as a `Router` (media/router.py) once its media plane exists; a WebRTC player attaches
its consumers to that router's track routers, a Python reader adds itself as a packet reader.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Protocol

from ..media.router import Router

log = logging.getLogger("webcall.streams")


class EndReason(enum.StrEnum):
    """Why a publication's readers lose it (each front end says it in its own words)."""

    PUBLISHER_STOPPED = "publisher-stopped"  # the publisher stopped, or its media failed
    PUBLISHER_DISCONNECTED = "publisher-disconnected"  # the publisher's signalling connection closed
    TERMINATED = "terminated"  # an operator stopped it (REST terminate)
    ORIGIN_LOST = "origin-lost"  # a stream relayed from another node: that node went silent (cluster/node.py)


class NameInUse(Exception):
    """Someone already publishes under this name."""


class Source(Protocol):
    """What publishes under a name."""

    name: str
    width: int
    height: int

    @property
    def closed(self) -> bool: ...

    @property
    def live(self) -> bool:
        """Media is flowing (the first packet arrived, and the source has not ended)."""
        ...

    @property
    def router(self) -> Router | None: ...


class StreamReader(Protocol):
    """What reads a name; told when the source goes away or its picture changes size."""

    def on_source_ended(self, reason: EndReason) -> None: ...
    def on_video_size(self, width: int, height: int) -> None: ...


class StreamRegistry:
    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}
        self._readers: dict[str, set[StreamReader]] = {}
        # Told after a name is released, with the reason (the cluster frees the name in its directory).
        self.on_unpublish: list[Callable[[Source, EndReason], None]] = []

    # --- publish ----------------------------------------------------------------------------------

    def publish(self, source: Source) -> None:
        """Claim `source.name` for this source; NameInUse if someone holds it."""
        if source.name in self._sources:
            raise NameInUse(source.name)
        self._sources[source.name] = source

    def unpublish(self, source: Source, reason: EndReason) -> None:
        """Release the name (if this source holds it) and tell every reader that the source has ended."""
        if self._sources.get(source.name) is not source:
            return
        del self._sources[source.name]
        for reader in list(self._readers.pop(source.name, ())):
            try:
                reader.on_source_ended(reason)
            except Exception:  # one reader's bug must not keep the others reading a dead source
                log.exception("reader failed on source end stream=%s", source.name)
        for listener in self.on_unpublish:
            try:
                listener(source, reason)
            except Exception:
                log.exception("unpublish listener failed stream=%s", source.name)

    def find(self, name: str) -> Source | None:
        source = self._sources.get(name)
        return source if source is not None and not source.closed else None

    def names(self) -> set[str]:
        """Every claimed name, including sources still connecting."""
        return set(self._sources)

    def sources(self) -> list[Source]:
        return [s for s in self._sources.values() if not s.closed]

    # --- read -------------------------------------------------------------------------------------

    def read(self, name: str, reader: StreamReader) -> Source | None:
        """Start reading `name`; the source, or None if nothing is published under it."""
        source = self.find(name)
        if source is None:
            return None
        self._readers.setdefault(name, set()).add(reader)
        return source

    def unread(self, name: str, reader: StreamReader) -> None:
        readers = self._readers.get(name)
        if readers is not None:
            readers.discard(reader)
            if not readers:
                del self._readers[name]

    def readers_count(self) -> int:
        return sum(len(readers) for readers in self._readers.values())

    def readers(self, name: str) -> list[StreamReader]:
        return list(self._readers.get(name, ()))

    # --- events from a source ---------------------------------------------------------------------

    def video_size(self, source: Source, width: int, height: int) -> None:
        """The source's picture changed size: every reader hears it."""
        if self._sources.get(source.name) is not source:
            return
        for reader in self.readers(source.name):
            reader.on_video_size(width, height)
