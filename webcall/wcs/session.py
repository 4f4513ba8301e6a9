"""One WCS client session: message dispatch, keepalive, and everything the session owns.

The session never touches the socket: it is handed a `send(text)` callable and fed text frames. Where a
message is handled is one hop from here: `_on_<MessageType>`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from collections.abc import Callable

from ..logs import q
from ..protocol.sdp import SdpError, negotiate_play, negotiate_publish
from ..streams.registry import EndReason, NameInUse
from ..streams.snapshots import SnapshotError
from . import messages as msg
from .hub import Hub
from .status import Info, StreamStatus
from .stream import Playback, Publication

log = logging.getLogger("webcall.wcs")


class Session:
    def __init__(self, hub: Hub, send: Callable[[str], None], close_socket: Callable[[], None],
                 remote: str, local: str) -> None:
        self.hub = hub
        self.id = f"/{remote}/{local}/{secrets.token_hex(4)}"  # WCS shape, plus a nonce: unique per session
        self._send = send
        self._close_socket = close_socket
        self.established = False
        self.app_key = msg.DEFAULT_APP_KEY
        self.connection: dict | None = None  # the client's `connection` object, as sent
        self.create_date = int(time.time() * 1000)
        self.streams: dict[str, Publication | Playback] = {}
        self._tasks: set[asyncio.Task] = set()  # snapshot replies in progress
        self.missed_pongs = 0
        self.protocol_errors = 0
        self.closed = False
        self._pinger: asyncio.Task[None] | None = None
        hub.sessions.add(self)

    def send(self, text: str) -> None:
        if not self.closed:
            self._send(text)

    def forget(self, stream: Publication | Playback) -> None:
        if self.streams.get(stream.media_session_id) is stream:
            del self.streams[stream.media_session_id]

    # --- input ------------------------------------------------------------------------------------

    def handle_text(self, text: str | bytes) -> None:
        self.missed_pongs = 0  # any message proves the client is alive
        try:
            message = msg.parse_message(text)
        except msg.ProtocolError as exc:
            self._protocol_error(exc)
            return
        handler = getattr(self, f"_on_{type(message).__name__}")
        if not self.established and not isinstance(message, (msg.Connection, msg.Ping, msg.Pong, msg.Ignored)):
            self._protocol_error(msg.ProtocolError(Info.SESSION_NOT_READY, type(message).__name__,
                                                   getattr(message, "media_session_id", None)))
            return
        handler(message)

    def _protocol_error(self, exc: msg.ProtocolError) -> None:
        self.protocol_errors += 1
        log.info("protocol error session=%s message=%s info=%s", self.id, exc.message_name, q(exc.info))
        if exc.media_session_id and exc.message_name in ("publishStream", "playStream"):
            self.send(msg.stream_status(media_session_id=exc.media_session_id, name="",
                                        published=exc.message_name == "publishStream",
                                        status=StreamStatus.FAILED, info=exc.info))
        else:
            self.send(msg.fail(exc.info, exc.media_session_id))
        if self.protocol_errors >= self.hub.settings.max_protocol_errors:
            log.warning("closing abusive session=%s errors=%d", self.id, self.protocol_errors)
            self.close()

    # --- handlers ---------------------------------------------------------------------------------

    def _on_Connection(self, m: msg.Connection) -> None:
        if self.established:
            return  # a repeated `connection` changes nothing
        self.established = True
        self.app_key, self.connection = m.app_key, m.raw
        self.send(msg.get_user_data(m, self.id))
        self.send(msg.get_version(self.hub.settings.server_version))
        log.info("session established session=%s appKey=%s", self.id, q(m.app_key))
        self._pinger = asyncio.get_running_loop().create_task(self._ping_loop(), name=f"ping {self.id}")

    def _on_Ping(self, m: msg.Ping) -> None:
        self.send(msg.pong())

    def _on_Pong(self, m: msg.Pong) -> None:
        pass

    def _on_Ignored(self, m: msg.Ignored) -> None:
        pass

    def _fail_stream(self, m: msg.PublishStream | msg.PlayStream, info: str) -> None:
        log.info("stream refused session=%s mediaSessionId=%s stream=%s info=%s", self.id, q(m.media_session_id),
                 q(m.name), q(info))
        self.send(msg.stream_status(media_session_id=m.media_session_id, name=m.name,
                                    published=isinstance(m, msg.PublishStream), status=StreamStatus.FAILED,
                                    info=info))

    def _precheck(self, m: msg.PublishStream | msg.PlayStream) -> bool:
        if m.media_provider != "WebRTC":
            self._fail_stream(m, f"Media provider {m.media_provider} is not supported")
            return False
        if m.media_session_id in self.streams:
            self._fail_stream(m, Info.MEDIASESSION_ID_ALREADY_IN_USE)
            return False
        return True

    def _on_PublishStream(self, m: msg.PublishStream) -> None:
        if not self._precheck(m):
            return
        publication = Publication(self, m)
        try:
            self.hub.registry.publish(publication)
        except NameInUse:
            self._fail_stream(m, Info.STREAM_NAME_ALREADY_IN_USE)
            return
        try:
            neg = negotiate_publish(m.sdp, self.hub.settings.video_codecs)
        except SdpError as exc:
            self.hub.registry.unpublish(publication, EndReason.PUBLISHER_STOPPED)
            self._fail_stream(m, exc.info)
            return
        self.streams[m.media_session_id] = publication
        publication.start(neg)

    def _on_PlayStream(self, m: msg.PlayStream) -> None:
        if not self._precheck(m):
            return
        source = self.hub.registry.find(m.name)
        router = source.router if source is not None else None
        if source is None or router is None:
            self._fail_stream(m, Info.STREAM_NOT_FOUND)
            return
        try:
            neg = negotiate_play(m.sdp, {kind: track.producer.codec for kind, track in router.tracks.items()})
        except SdpError as exc:
            self._fail_stream(m, exc.info)
            return
        playback = Playback(self, m, source)
        self.streams[m.media_session_id] = playback
        self.hub.registry.read(m.name, playback)
        playback.start(neg, router)

    def _stream(self, media_session_id: str, kind: type) -> Publication | Playback | None:
        stream = self.streams.get(media_session_id)
        return stream if isinstance(stream, kind) else None

    def _on_UnPublishStream(self, m: msg.UnPublishStream) -> None:
        publication = self._stream(m.media_session_id, Publication)
        if publication is None:
            self.send(msg.fail(Info.STREAM_NOT_FOUND, m.media_session_id))
            return
        publication.stop(StreamStatus.UNPUBLISHED, Info.STOPPED_BY_PUBLISHER_STOP)

    def _on_StopStream(self, m: msg.StopStream) -> None:
        playback = self._stream(m.media_session_id, Playback)
        if playback is None:
            self.send(msg.fail(Info.STREAM_NOT_FOUND, m.media_session_id))
            return
        playback.stop(StreamStatus.STOPPED, Info.STOPPED_BY_USER)

    def _on_AvailableStream(self, m: msg.AvailableStream) -> None:
        source = self.hub.registry.find(m.name)
        if source is not None and source.live:
            self.send(msg.available_stream(m.media_session_id, True))
        else:
            self.send(msg.available_stream(m.media_session_id, False, Info.STREAM_NOT_FOUND))

    def _on_SendData(self, m: msg.SendData) -> None:
        # No backend hook is configured, so the data is accepted as delivered to the server.
        self.send(msg.data_status(m.operation_id, "ACCEPTED"))

    def _on_SendStreamEvent(self, m: msg.SendStreamEvent) -> None:
        publication = self._stream(m.media_session_id, Publication)
        if publication is None:
            self.send(msg.fail(Info.STREAM_NOT_FOUND, m.media_session_id))
            return
        publication.relay_event(m.type, m.payload)

    def _on_Snapshot(self, m: msg.Snapshot) -> None:
        """Grab the current picture of stream `name`; the answer goes to the requesting mediaSessionId."""
        task = asyncio.get_running_loop().create_task(self._snapshot(m), name=f"snapshot {self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _snapshot(self, m: msg.Snapshot) -> None:
        try:
            png = await self.hub.snapshot(m.name)
        except SnapshotError as exc:
            log.info("snapshot failed session=%s mediaSessionId=%s stream=%s info=%s", self.id,
                     q(m.media_session_id), q(m.name), q(exc))
            self.send(msg.notify_stream_event(m.media_session_id, "snapshotFailed", {"info": str(exc)}))
            return
        self.send(msg.notify_stream_event(m.media_session_id, "snapshotCompleted",
                                          {"snapshot": base64.b64encode(png).decode("ascii")}))

    def push_data(self, operation_id: str, payload: object) -> None:
        """Data from the backend (REST /data/send) to this client as OnDataEvent (spec §9)."""
        self.send(msg.on_data_event(self.id, operation_id, payload, self.app_key))

    # --- keepalive and teardown -------------------------------------------------------------------

    async def _ping_loop(self) -> None:
        settings = self.hub.settings
        while not self.closed:
            await asyncio.sleep(settings.ping_interval)
            if self.missed_pongs >= settings.ping_probes:
                log.info("keepalive lost session=%s missed=%d", self.id, self.missed_pongs)
                self.close()
                return
            self.missed_pongs += 1
            self.send(msg.ping())

    def close(self) -> None:
        """Release every stream of the session and the socket (idempotent)."""
        if self.closed:
            return
        self.closed = True  # from here on nothing more is sent to this client
        for stream in list(self.streams.values()):
            if isinstance(stream, Publication):
                stream.stop(StreamStatus.UNPUBLISHED, Info.STOPPED_BY_SESSION_DISCONNECT,
                            end=EndReason.PUBLISHER_DISCONNECTED)
            else:
                stream.stop(StreamStatus.STOPPED, Info.STOPPED_BY_SESSION_DISCONNECT)
        self.hub.sessions.discard(self)
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()
        self._pinger = None
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._close_socket()
        log.info("session closed session=%s", self.id)
