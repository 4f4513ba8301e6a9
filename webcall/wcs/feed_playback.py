"""A player over the second WebSocket (spec §11): MSE or WSPlayer, fed by a shared feed of the stream.

`playStream` with mediaProvider MSE gets a trivial answer (mse/signalling.py) and PLAYING at once; the client
then opens its media socket with `connectMediaTransport {authToken}` (server/media_socket.py), which the session
binds to its most recent unbound feed playback. From then on the playback is a sink of the publication's shared
feed (streams/feeds.py): chunks go to the socket through a bounded buffer; a socket that stops reading ends this
playback (FAILED), nothing else. A feed that fails (the publication cannot be transcoded) ends its players only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..logs import q
from ..mse.catchup import CatchUp
from ..mse.startgap import StartGuard
from ..mse.signalling import feed_answer
from ..streams.feeds import SharedFeed
from ..streams.registry import Source
from . import messages as msg
from .status import OwnInfo, StreamStatus
from .stream import Owner, Playback

log = logging.getLogger("webcall.wcs")

OUTPUT = {"MSE": "mse", "WSPlayer": "wsplayer"}  # mediaProvider -> feed output


def requested_profile(request: msg.PlayStream, source: Source) -> tuple[int, int, int] | None:
    """(width, height, bit/s) when playStream asks for a smaller picture than published (spec §4.1: 0 = as
    published; `bitrate` in kbit/s, as WCS takes it, applies with a size); None otherwise."""

    def number(key: str) -> int:
        value = request.raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 100_000 else 0

    width, height, kbps = number("width"), number("height"), number("bitrate")
    if not width and not height:
        return None
    if source.width and (not width or width >= source.width) and (not height or height >= source.height):
        return None  # not smaller than what is published
    return width, height, kbps * 1000


class MediaTransport(Protocol):
    """The media socket as a playback sees it (server/media_socket.py)."""

    def send_chunks(self, data: list[bytes], joined: bool) -> bool: ...  # False: its buffer is full
    def close(self, reason: str) -> None: ...


class FeedPlayback(Playback):
    def __init__(self, session: Owner, request: msg.PlayStream, publication: Source) -> None:
        super().__init__(session, request, publication)
        self.output = OUTPUT[request.media_provider]
        self.transport: MediaTransport | None = None
        self.feed: SharedFeed | None = None
        self.chunks_sent = 0
        self.catch_up = CatchUp() if self.output == "mse" else None  # the SDK's 2 s start buffer, made up
        self.start_guard: StartGuard | None = None  # MSE with video: no hole after the first frame (mse/startgap.py)

    def start_feed(self) -> None:
        router = self.publication.router
        assert router is not None
        has_video, has_audio = "video" in router.tracks, "audio" in router.tracks
        mse = self.output == "mse"
        self.video_codec = ("H264" if mse else "MPV") if has_video else None
        self.audio_codec = ("mpeg4-generic" if mse else "PCMU") if has_audio else None
        self.profile = requested_profile(self.request, self.publication) if has_video else None
        self.start_guard = StartGuard() if mse and has_video else None
        self.width, self.height = self.publication.width, self.publication.height
        self.session.send(msg.set_remote_sdp(self.media_session_id, feed_answer(self.request.sdp or "", has_video,
                                                                                has_audio)))
        self.send_status(StreamStatus.PLAYING)
        if self.width:
            self.on_video_size(self.width, self.height)  # the size this player gets (a profile scales it)
        self._timer = asyncio.get_running_loop().call_later(self.hub.settings.connect_timeout, self._no_transport)
        log.info("feed play answered %s output=%s video=%s audio=%s", self.label, self.output, has_video, has_audio)

    def _no_transport(self) -> None:
        self._timer = None
        if self.transport is None:
            self.stop(StreamStatus.FAILED, OwnInfo.MEDIA_TRANSPORT_TIMEOUT)

    @property
    def bound(self) -> bool:
        return self.transport is not None

    def bind(self, transport: MediaTransport) -> None:
        """The client's media socket arrived: from now on it gets the shared feed's chunks."""
        self._cancel_timer()
        self.transport = transport
        router = self.publication.router
        assert router is not None
        self.feed = self.hub.feeds.subscribe(router, self.output, self, self.publication.name,
                                             has_video="video" in router.tracks, has_audio="audio" in router.tracks,
                                             profile=self.profile)
        log.info("media transport bound %s", self.label)

    def unbind(self, transport: MediaTransport) -> None:
        """The media socket closed; the playback stays until the client stops it (the SDK closes it first)."""
        if self.transport is transport:
            self.transport = None
            self._leave_feed()

    # --- as a sink of the shared feed (streams/feeds.py) ----------------------------------------------

    def on_chunks(self, data: list[bytes]) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.start_guard is not None and not self.start_guard.done:
            data = self.start_guard.rewrite(data)
        if self.catch_up is not None:
            data = self.catch_up.rewrite(data, asyncio.get_running_loop().time())
        if not data:
            return
        if not transport.send_chunks(data, self.output == "mse"):  # MSE records share frames; WSPlayer: one each
            log.warning("media transport not reading %s", self.label)
            self.stop(StreamStatus.FAILED, OwnInfo.MEDIA_TRANSPORT_NOT_READING)
            return
        self.chunks_sent += len(data)

    def on_feed_failed(self, info: str) -> None:
        self.feed = None
        self.stop(StreamStatus.FAILED, info)

    def _leave_feed(self) -> None:
        if self.feed is not None:
            self.hub.feeds.unsubscribe(self.feed, self)
            self.feed = None

    def stop(self, status: StreamStatus, info: str | None, notify_self: bool = True) -> None:
        if self.closed:
            return
        self._cancel_timer()
        self._leave_feed()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close(info or "stopped")
        super().stop(status, info, notify_self)
        catch_up = ""
        if self.catch_up is not None:  # how far it was pulled in, and how far it played behind what it was sent
            ahead = self.catch_up.ahead_ms(asyncio.get_running_loop().time())
            catch_up = f" pulled_in_ms={round(self.catch_up.shift)} ahead_ms={None if ahead is None else round(ahead)}"
        if self.start_guard is not None and self.start_guard.restamped_ms:
            catch_up += f" first_frame_moved_ms={self.start_guard.restamped_ms}"
        log.info("feed playback ended %s chunks_sent=%d%s info=%s", self.label, self.chunks_sent, catch_up, q(info))

