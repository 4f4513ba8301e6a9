"""Shared feeds: one output rendition per (publication, output), however many players read it.

A front end that plays a publication in another form than WebRTC (the MSE and WSPlayer media sockets)
subscribes a `Sink` here. The first subscriber starts the feed through the media plane's `feed` verb (in the
process that holds the publication: media/plane.py, or a media worker through workers/control.py); the last one
leaving stops it `LINGER` seconds later (a quick re-join reuses it). Chunks arrive once per feed and are fanned
out here, on the control process's loop.

A new subscriber starts clean: the latest sequence headers first, then the chunks since the latest video
keyframe (kept here, bounded), so it shows a picture at once instead of waiting for the next keyframe.
A sink that cannot take more (its socket is not reading) says so by returning False; it is dropped by its
owner, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("webcall.streams")

LINGER = 3.0  # seconds a feed outlives its last subscriber
CATCH_UP_SPAN_MS = 500  # a late joiner gets the cached GOP only if it spans less: else it waits for a new keyframe
# The SDK's MSE player appends nothing before its own buffer spans more than 2 s of audio and of video, and then
# plays from the start of it (media-source-media-provider.js, `doAppending`): its latency is that span whatever we
# do. A cached GOP younger than 2 s therefore costs no latency and saves its age in first-frame time; an older one
# would add latency (README "MSE, WSPlayer and transcoded renditions").
CATCH_UP_SPAN_MS_BY_OUTPUT = {"mse": 2000}
# An MSE joiner whose latest GOP is younger than that gets the one before it too (when it is under this age): the
# SDK then starts at once, and the player makes up the extra span later (mse/catchup.py).
MSE_START_SPAN_MAX_MS = 4500
GOP_CHUNKS = 600  # chunks kept since the last keyframe (≈ 10 s of 30 fps video with its audio)
# A WSPlayer player starts with the audio chunks sent just before its keyframe (20 ms each, so ≈ 100 ms): the SDK's
# receiver (WSReceiver2.js) lines the two up at the start, and when its first audio is more than 30 ms later than its
# first video it drops video to a keyframe after that audio, then waits for another second of video (measured: a
# first picture 1 s later, in 3 of 8 plays). Audio from before the keyframe it simply trims.
PRE_KEY_AUDIO_CHUNKS = {"wsplayer": 5}


class Sink(Protocol):
    def on_chunks(self, data: list[bytes]) -> None: ...
    def on_feed_failed(self, info: str) -> None: ...


class FeedHandle(Protocol):
    """What the media plane's `feed` verb returns."""

    transcoding_video: bool

    def request_keyframe(self) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


FeedStarter = Callable[..., FeedHandle]  # (router, output, emit, on_failed, label, profile) -> a running feed


@dataclass
class SharedFeed:
    key: tuple[int, str, tuple[int, int, int] | None]
    output: str
    label: str
    handle: FeedHandle | None = None
    sinks: dict[Sink, bool] = field(default_factory=dict)  # sink -> started (has had its keyframe)
    vconfig: bytes | None = None
    aconfig: bytes | None = None
    gop: list[bytes] = field(default_factory=list)  # chunks since the latest keyframe, "key" first
    prev_gop: list[bytes] = field(default_factory=list)  # the GOP before it (same decoder config), for MSE joiners
    prev_key_at: float = 0.0
    config_changed: bool = False  # a new avcC since the latest keyframe: the GOP before it is not kept
    has_key: bool = False
    key_at: float = 0.0  # loop time the cached keyframe arrived
    linger: asyncio.TimerHandle | None = None
    failed: str | None = None
    audio_only: bool = False
    has_audio: bool = True
    recent_audio: deque[bytes] = field(init=False)  # the latest audio chunks (PRE_KEY_AUDIO_CHUNKS of them)
    key_audio: list[bytes] = field(default_factory=list)  # those just before the latest keyframe

    def __post_init__(self) -> None:
        self.recent_audio = deque(maxlen=PRE_KEY_AUDIO_CHUNKS.get(self.output, 0))

    def ready(self) -> bool:
        """The sequence headers a player needs before its first keyframe are known (avcC, and ASC if audio)."""
        return self.vconfig is not None and (self.aconfig is not None or not self.has_audio)

    def head(self) -> list[bytes]:
        return [c for c in (self.vconfig, self.aconfig) if c is not None]

    def opening(self) -> list[bytes]:
        """What a player starting at the latest keyframe gets: the headers, the audio just before it, the GOP."""
        return self.head() + self.key_audio + self.gop


class Feeds:
    def __init__(self, start: FeedStarter) -> None:
        self._start = start
        self.feeds: dict[tuple[int, str, tuple[int, int, int] | None], SharedFeed] = {}
        self.started = 0  # feeds ever started (tests: "the transcoder was not started")
        self.transcoders_started = 0

    def subscribe(self, router: Any, output: str, sink: Sink, label: str, has_video: bool,
                  has_audio: bool = True, profile: tuple[int, int, int] | None = None) -> SharedFeed:
        """`profile`: (width, height, bit/s) of a smaller picture; one feed per (stream, output, profile)."""
        key = (id(router), output, profile)
        feed = self.feeds.get(key)
        if feed is not None and feed.failed is None:
            if feed.linger is not None:
                feed.linger.cancel()
                feed.linger = None
            feed.sinks[sink] = False
            self._catch_up(feed, sink)
            return feed
        feed = SharedFeed(key, output, label, audio_only=not has_video, has_audio=has_audio)
        self.feeds[key] = feed
        feed.sinks[sink] = False
        feed.handle = self._start(router, output, lambda chunks: self._on_chunks(feed, chunks),
                                  lambda info: self._on_failed(feed, info), label, profile)
        self.started += 1
        if feed.handle.transcoding_video:
            self.transcoders_started += 1
        log.info("feed started %s output=%s transcoding_video=%s", label, output, feed.handle.transcoding_video)
        return feed

    def unsubscribe(self, feed: SharedFeed, sink: Sink) -> None:
        feed.sinks.pop(sink, None)
        if not feed.sinks and feed.linger is None and self.feeds.get(feed.key) is feed:
            feed.linger = asyncio.get_running_loop().call_later(LINGER, self._stop, feed)

    def _stop(self, feed: SharedFeed) -> None:
        feed.linger = None
        if feed.sinks:
            return
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        if feed.handle is not None:
            stats = feed.handle.stats()
            feed.handle.close()
            log.info("feed stopped %s output=%s stats=%s", feed.label, feed.output, stats)

    def source_ended(self, router: Any) -> None:
        """The publication is gone: its feeds stop now (their subscribers are being stopped by the core)."""
        for key in [k for k in self.feeds if k[0] == id(router)]:
            feed = self.feeds.pop(key)
            if feed.linger is not None:
                feed.linger.cancel()
            if feed.handle is not None:
                feed.handle.close()

    def describe(self) -> list[dict[str, Any]]:
        return [{"label": f.label, "output": f.output, "profile": f.key[2], "players": len(f.sinks),
                 "transcodingVideo": bool(f.handle and f.handle.transcoding_video),
                 **({"stats": f.handle.stats()} if f.handle else {})} for f in self.feeds.values()]

    # --- from the feed --------------------------------------------------------------------------------

    def _catch_up(self, feed: SharedFeed, sink: Sink) -> None:
        if feed.audio_only:
            head = [c for c in (feed.aconfig,) if c is not None]
            if head:
                feed.sinks[sink] = True
                sink.on_chunks(head)
            return
        age_ms = (asyncio.get_running_loop().time() - feed.key_at) * 1000
        span = CATCH_UP_SPAN_MS_BY_OUTPUT.get(feed.output, CATCH_UP_SPAN_MS)
        prev_age_ms = (asyncio.get_running_loop().time() - feed.prev_key_at) * 1000
        if (feed.output == "mse" and feed.has_key and feed.ready() and feed.prev_gop and age_ms < span
                and prev_age_ms < MSE_START_SPAN_MAX_MS):
            feed.sinks[sink] = True
            # the avcC stamped with the older keyframe's time, as before any keyframe (the SDK's demuxer takes a
            # jump of its own between an avcC and the frames after it for a reset)
            vconfig = feed.vconfig[:1] + feed.prev_gop[0][1:5] + feed.vconfig[5:] if feed.vconfig else None
            head = [c for c in (vconfig, feed.aconfig) if c is not None]
            sink.on_chunks(head + feed.prev_gop + feed.gop)
        elif feed.has_key and feed.ready() and age_ms < span:
            feed.sinks[sink] = True
            sink.on_chunks(feed.opening())
        elif feed.handle is not None:
            feed.handle.request_keyframe()

    def _on_chunks(self, feed: SharedFeed, chunks: list[tuple[str, bytes]]) -> None:
        # Each sink gets this batch in one call: a player's first batch is all it starts with (mse/catchup.py
        # measures that span), and one call per player per batch is cheaper than one per chunk.
        batches: dict[Sink, list[bytes]] = {}
        for kind, data in chunks:
            if kind in ("vconfig", "aconfig"):
                if kind == "vconfig":
                    # (compared without the 9-byte record header: the avcC comes again, stamped, before every key)
                    changed = feed.vconfig is not None and data[9:] != feed.vconfig[9:]
                    feed.config_changed = feed.config_changed or changed
                    feed.vconfig = data
                else:
                    feed.aconfig = data
                for sink, started in list(feed.sinks.items()):
                    if started:  # a new picture size or codec setup: the demuxer re-initializes
                        batches.setdefault(sink, []).append(data)
                    elif kind == "aconfig" and feed.has_key and feed.ready():  # audio's header came after the key
                        feed.sinks[sink] = True
                        batches.setdefault(sink, []).extend(feed.opening())
                if kind == "aconfig" and feed.audio_only:
                    for sink, started in list(feed.sinks.items()):
                        if not started:
                            feed.sinks[sink] = True
                            batches.setdefault(sink, []).append(data)
                continue
            if kind == "key":
                keep = feed.has_key and not feed.config_changed
                feed.prev_gop, feed.prev_key_at = (feed.gop, feed.key_at) if keep else ([], 0.0)
                feed.config_changed = False
                feed.gop = [data]
                feed.key_audio = list(feed.recent_audio)
                feed.has_key = True
                feed.key_at = asyncio.get_running_loop().time()
            else:
                if kind == "audio":
                    feed.recent_audio.append(data)
                if feed.has_key and len(feed.gop) < GOP_CHUNKS:
                    feed.gop.append(data)
                elif feed.has_key:  # a very long GOP: stop keeping it, a late joiner waits for (and asks) a keyframe
                    feed.gop, feed.has_key, feed.prev_gop = [], False, []
            for sink, started in list(feed.sinks.items()):
                if started:
                    batches.setdefault(sink, []).append(data)
                elif kind == "key" and feed.ready():
                    feed.sinks[sink] = True
                    batches.setdefault(sink, []).extend(feed.opening())
        for sink, batch in batches.items():
            if sink in feed.sinks:  # (one that failed on an earlier batch of this call has left)
                sink.on_chunks(batch)

    def _on_failed(self, feed: SharedFeed, info: str) -> None:
        feed.failed = info
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        log.warning("feed failed %s output=%s info=%s", feed.label, feed.output, info)
        for sink in list(feed.sinks):
            sink.on_feed_failed(info)
        feed.sinks.clear()
