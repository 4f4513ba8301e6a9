"""One WCS client session: message dispatch, REST hooks, and everything the session owns.

The session never touches the socket: it is handed a `send(text)` callable and fed text frames. Where a
message is handled is one hop from here: `_on_<MessageType>`.

With a backend configured for the session's appKey (webcall/hooks, docs/hooks.md), the messages that a hook
can deny wait for its answer before their handler runs; the session's later messages wait behind it, so the
client's order is kept (pings are answered at once).

Guardrails (webcall/limits.py): messages go through a token bucket (--max-messages-per-second; excess gets
`fail` and counts as a protocol error, so a flooding client is closed; excess the server ignores anyway, such
as pushLogs, is dropped without a word), and a stream beyond the session's,
the stream's or the server's limit is FAILED with an info naming the limit.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import limits
from ..hooks import policy as hooks
from ..hooks.client import HookClient, keep_alive_loop
from ..logs import q
from ..protocol.sdp import Negotiation, SdpError, negotiate_play, negotiate_publish
from ..cluster.reasons import ClusterRefused
from ..streams.registry import EndReason, NameInUse, Source
from ..streams.snapshots import SnapshotError
from ..transcode.rendition import RENDITION_CODECS
from . import messages as msg
from .hub import Hub
from .status import REFUSAL_INFO, Info, OwnInfo, StreamStatus
from .feed_playback import OUTPUT as FEED_PROVIDERS
from .feed_playback import FeedPlayback, MediaTransport, requested_profile
from .stream import Playback, Publication

log = logging.getLogger("webcall.wcs")

# The client messages a backend may deny, with WCS's hook names (spec §13).
HOOKED: dict[type, str] = {
    msg.PublishStream: hooks.PUBLISH_STREAM, msg.PlayStream: hooks.PLAY_STREAM,
    msg.UnPublishStream: hooks.UNPUBLISH_STREAM, msg.StopStream: hooks.STOP_STREAM,
    msg.SendData: hooks.ON_DATA_EVENT, msg.Snapshot: hooks.SNAPSHOT,
}
IGNORED_BURST = 20  # seconds' worth of --max-messages-per-second that ignored messages may go over it by
MAX_WAITING = 64  # messages queued behind a hook; more is a client that does not wait for answers


class Session:
    def __init__(self, hub: Hub, send: Callable[[str], None], close_socket: Callable[[], None],
                 remote: str, local: str, origin: str | None = None) -> None:
        self.hub = hub
        self.id = f"/{remote}/{local}/{secrets.token_hex(4)}"  # WCS shape, plus a nonce: unique per session
        self.remote_ip = remote.rsplit(":", 1)[0]  # for --max-sessions-per-ip
        rate = hub.settings.limits.messages_per_second
        self._bucket = limits.TokenBucket(rate, 2 * rate) if rate else None
        # Over the rate, messages we ignore anyway are dropped quietly while this one lasts (the SDK's debug
        # flush); a flood of them still empties it, and then counts as any other.
        self._quiet = limits.TokenBucket(rate, IGNORED_BURST * rate) if rate else None
        self._send = send
        self._close_socket = close_socket
        self.established = False
        self.app_key = msg.DEFAULT_APP_KEY
        self.connection: dict | None = None  # the client's `connection` object, as sent
        self.create_date = int(time.time() * 1000)
        self.streams: dict[str, Publication | Playback] = {}
        self._tasks: set[asyncio.Task] = set()  # snapshot replies in progress
        self.missed_pongs = 0  # pings since the client last said anything (keepalive.py)
        self.protocol_errors = 0
        self.closed = False
        self.origin = origin  # the WebSocket's Origin header, for the connect hook
        self.hook: HookClient | None = None  # once `connection` named the appKey
        self._hooking: asyncio.Task[None] | None = None  # a message waiting for its hook's answer
        self._waiting: deque[msg.Message] = deque()  # messages that arrived meanwhile
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
        over_rate = self._bucket is not None and not self._bucket.take()
        try:
            message = msg.parse_message(text)
        except msg.ProtocolError as exc:
            self._protocol_error(exc)
            return
        if over_rate:
            self.hub.refusals[limits.MESSAGES_PER_SECOND] += 1
            # A message we ignore asked for nothing: dropping it loses nothing. The SDK's own debug mode sends
            # every log line it kept as a pushLogs at once (stream-diagnostic: ~100 in a second); that is not
            # a flood to close the session for. Whatever asks for something gets `fail` and counts.
            quiet = isinstance(message, msg.Ignored) and self._quiet is not None and self._quiet.take()
            if not quiet:
                self._protocol_error(msg.ProtocolError(OwnInfo.TOO_MANY_MESSAGES, "message"))
            return
        if self._hooking is not None and not isinstance(message, (msg.Ping, msg.Pong)):
            if len(self._waiting) >= MAX_WAITING:
                self._protocol_error(msg.ProtocolError("Too many requests", type(message).__name__,
                                                       getattr(message, "media_session_id", None)))
                return
            self._waiting.append(message)
            return
        self._dispatch(message)

    def _dispatch(self, message: msg.Message) -> None:
        handler = getattr(self, f"_on_{type(message).__name__}")
        if not self.established and not isinstance(message, (msg.Connection, msg.Ping, msg.Pong, msg.Ignored)):
            self._protocol_error(msg.ProtocolError(Info.SESSION_NOT_READY, type(message).__name__,
                                                   getattr(message, "media_session_id", None)))
            return
        method = self._hook_method(message)
        if method is None:
            handler(message)
            return
        self._hooking = asyncio.get_running_loop().create_task(self._hooked(message, method, handler),
                                                               name=f"hook {self.id}")

    # --- REST hooks (spec §13, webcall/hooks) -----------------------------------------------------

    def _hook_method(self, message: msg.Message) -> str | None:
        if isinstance(message, msg.Connection):
            if self.established:
                return None
            self.hook = self.hub.hooks.client(message.app_key, self.id)
            return hooks.CONNECT if self.hook.enabled else None
        if self.hook is None or not self.hook.enabled:
            return None
        return HOOKED.get(type(message))

    @staticmethod
    def _hook_object(message: Any, origin: str | None) -> dict[str, Any]:
        if isinstance(message, msg.Connection):
            return {**message.raw, "origin": origin}
        if isinstance(message, msg.SendData):
            return {"operationId": message.operation_id, "payload": message.payload}
        if isinstance(message, msg.Snapshot):
            return {"name": message.name, "mediaSessionId": message.media_session_id}
        return dict(message.raw)

    async def _hooked(self, message: Any, method: str, handler: Callable[[Any], None]) -> None:
        try:
            assert self.hook is not None
            obj = self._hook_object(message, self.origin)
            decision = await self.hook.invoke(method, obj)
            if self.closed:
                return
            if not decision.allowed:
                self._denied(message, decision.info or Info.RESTRICTED_ACCESS)
                return
            if decision.body and isinstance(message, (msg.PublishStream, msg.PlayStream)):
                message = self._overwritten(message, self.hook.apply(method, obj, decision))
            handler(message)
            if isinstance(message, msg.Connection):
                self.hook.event(hooks.CONNECTION_STATUS_EVENT, {"status": "ESTABLISHED"})
        except Exception:  # a bug here must not leave the session stuck behind this message
            log.exception("hooked message failed session=%s method=%s", self.id, method)
        finally:
            if self._hooking is asyncio.current_task():  # the handler may have started a cluster request
                self._hooking = None
            while self._waiting and self._hooking is None and not self.closed:
                self._dispatch(self._waiting.popleft())

    def _hold(self, coro: Any, name: str) -> None:
        """Run `coro` (a cluster request) with the session's later messages waiting behind it, as behind a hook."""
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("cluster request failed session=%s", self.id)
            finally:
                if self._hooking is asyncio.current_task():
                    self._hooking = None
                while self._waiting and self._hooking is None and not self.closed:
                    self._dispatch(self._waiting.popleft())
        self._hooking = asyncio.get_running_loop().create_task(run(), name=f"{name} {self.id}")

    def _overwritten(self, m: msg.PublishStream | msg.PlayStream, obj: dict[str, Any]) -> Any:
        """restPolicy OVERWRITE: the backend may rename the stream (validated like a client's name)."""
        name = obj.get("name", m.name)
        if name == m.name:
            return m
        try:
            name = msg.validate_name(name)
        except msg.ProtocolError:
            log.warning("hook overwrite ignored session=%s: bad stream name from the backend", self.id)
            return m
        log.info("hook renamed stream session=%s from=%s to=%s", self.id, q(m.name), q(name))
        return dataclasses.replace(m, name=name, raw={**m.raw, "name": name})

    def _denied(self, m: Any, info: str) -> None:
        """What a denied message gets: as WCS answers each of them."""
        if isinstance(m, msg.Connection):
            log.info("connection denied by hook session=%s info=%s", self.id, q(info))
            self.send(msg.fail(info))
            self.close()  # before getUserData: the SDK shows the session FAILED
        elif isinstance(m, (msg.PublishStream, msg.PlayStream)):
            self._fail_stream(m, info)
        elif isinstance(m, msg.SendData):
            self.send(msg.data_status(m.operation_id, "FAILED", info))
        elif isinstance(m, msg.Snapshot):
            self.send(msg.notify_stream_event(m.media_session_id, "snapshotFailed", {"info": info}))
        else:  # unPublishStream / stopStream: the stream goes on
            self.send(msg.fail(info))

    def status_event(self, obj: dict[str, Any]) -> None:
        """Every stream status sent to this client goes to the backend too (StreamStatusEvent, cannot deny)."""
        if self.hook is not None:
            self.hook.event(hooks.STREAM_STATUS_EVENT, obj)

    def hook_event(self, method: str, obj: dict[str, Any]) -> None:
        if self.hook is not None:
            self.hook.event(method, obj)

    def when_allowed(self, method: str, obj: dict[str, Any], allowed: Callable[[], None],
                     denied: Callable[[str], None]) -> None:
        """Run `allowed()` now with no backend, else once the backend allows `method` (`denied(info)` if not)."""
        if self.hook is None or not self.hook.enabled:
            allowed()
            return

        async def ask() -> None:
            assert self.hook is not None
            decision = await self.hook.invoke(method, obj)
            if not self.closed:
                allowed() if decision.allowed else denied(decision.info or Info.RESTRICTED_ACCESS)

        self._spawn(ask(), f"hook {method} {self.id}")

    def keep_alive(self, publication: Publication) -> asyncio.Task | None:
        """StreamKeepAliveEvent every --keep-alive-interval while `publication` is live; a 403 ends it."""
        interval = self.hub.settings.keep_alive_interval
        if self.hook is None or not self.hook.enabled or interval <= 0:
            return None

        def terminate(info: str) -> None:
            publication.stop(StreamStatus.UNPUBLISHED, info)

        return self._spawn(keep_alive_loop(self.hook, interval, lambda: None if publication.closed
                                           else publication.describe(), terminate), f"keep-alive {self.id}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        self.hub.keepalive.add(self)

    def _on_Ping(self, m: msg.Ping) -> None:
        self.send(msg.pong())

    def _on_Pong(self, m: msg.Pong) -> None:
        pass

    def _on_Ignored(self, m: msg.Ignored) -> None:
        pass

    def _fail_stream(self, m: msg.PublishStream | msg.PlayStream, info: str) -> None:
        log.info("stream refused session=%s mediaSessionId=%s stream=%s info=%s", self.id, q(m.media_session_id),
                 q(m.name), q(info))
        published = isinstance(m, msg.PublishStream)
        self.send(msg.stream_status(media_session_id=m.media_session_id, name=m.name, published=published,
                                    status=StreamStatus.FAILED, info=info))
        self.status_event({"mediaSessionId": m.media_session_id, "name": m.name, "published": published,
                           "status": str(StreamStatus.FAILED), "info": info})

    def _precheck(self, m: msg.PublishStream | msg.PlayStream) -> bool:
        # MSE/WSPlayer can only play (spec §11); WebRTC does both
        if m.media_provider != "WebRTC" and (isinstance(m, msg.PublishStream) or m.media_provider not in FEED_PROVIDERS):
            self._fail_stream(m, f"Media provider {m.media_provider} is not supported")
            return False
        if m.media_session_id in self.streams:
            self._fail_stream(m, Info.MEDIASESSION_ID_ALREADY_IN_USE)
            return False
        limit = self.hub.settings.limits.streams_per_session
        if limit and len(self.streams) >= limit:
            return self._refuse(m, limits.STREAMS_PER_SESSION, OwnInfo.TOO_MANY_STREAMS)
        return True

    def _refuse(self, m: msg.PublishStream | msg.PlayStream, limit: str, info: str) -> bool:
        """A stream over a limit: FAILED with `info`, counted under `limit`. Returns False (for _precheck)."""
        self.hub.refusals[limit] += 1
        self._fail_stream(m, info)
        return False

    def _on_PublishStream(self, m: msg.PublishStream) -> None:
        if not self._precheck(m):
            return
        limit = self.hub.settings.limits.publishers
        # connecting publishers count too; copies of other nodes' streams (cluster/node.py's `relayed`) do not
        registry = self.hub.registry
        if limit and len(registry.names()) - sum(getattr(s, "relayed", False) for s in registry.sources()) >= limit:
            self._refuse(m, limits.PUBLISHERS, OwnInfo.TOO_MANY_PUBLISHERS)
            return
        publication = Publication(self, m)
        try:
            self.hub.registry.publish(publication)
        except NameInUse:
            self._fail_stream(m, Info.STREAM_NAME_ALREADY_IN_USE)
            return
        if self.hub.cluster is not None:  # the name must be free on every node, too
            self._hold(self._claim_then_publish(m, publication), "cluster claim")
            return
        self._publish(m, publication)

    async def _claim_then_publish(self, m: msg.PublishStream, publication: Publication) -> None:
        assert self.hub.cluster is not None
        try:
            await self.hub.cluster.claim(m.name, m.media_session_id)
        except ClusterRefused as exc:
            self.hub.registry.unpublish(publication, EndReason.PUBLISHER_STOPPED)
            self._fail_stream(m, REFUSAL_INFO[exc.refusal])
            return
        if self.closed:  # the client left while we asked: the name goes again
            self.hub.registry.unpublish(publication, EndReason.PUBLISHER_DISCONNECTED)
            return
        self._publish(m, publication)

    def _publish(self, m: msg.PublishStream, publication: Publication) -> None:
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
        if source is None and self.hub.cluster is not None:  # published on another node, maybe
            self._hold(self._pull_then_play(m), "cluster pull")
            return
        self._play(m, source)

    async def _pull_then_play(self, m: msg.PlayStream) -> None:
        assert self.hub.cluster is not None
        try:
            source = await self.hub.cluster.pull(m.name)
        except ClusterRefused as exc:
            self._fail_stream(m, REFUSAL_INFO[exc.refusal])
            return
        if not self.closed:
            self._play(m, source)

    def _play(self, m: msg.PlayStream, source: Source | None) -> None:
        router = source.router if source is not None else None
        if source is None or router is None:
            self._fail_stream(m, Info.STREAM_NOT_FOUND)
            return
        limit = self.hub.settings.limits.players_per_stream
        if limit and len(self.hub.registry.readers(m.name)) >= limit:
            self._refuse(m, limits.PLAYERS_PER_STREAM, OwnInfo.TOO_MANY_PLAYERS)
            return
        if m.media_provider in FEED_PROVIDERS:
            feed_playback = FeedPlayback(self, m, source)
            self.streams[m.media_session_id] = feed_playback
            self.hub.registry.read(m.name, feed_playback)
            feed_playback.start_feed()
            return
        neg: Negotiation | None = None
        error: SdpError | None = None
        try:
            neg = negotiate_play(m.sdp, {kind: track.producer.codec for kind, track in router.tracks.items()})
        except SdpError as exc:
            error = exc
        playback = Playback(self, m, source)
        target = self._rendition_codec(m.sdp, router, neg)
        profile = self._profile(m, source, router) if target is not None or neg is not None else None
        if profile is not None and target is None and any(t.kind == "video" for t in neg.tracks):  # type: ignore[union-attr]
            target = router.tracks["video"].producer.codec.name.upper()  # a smaller size, same codec
        if target is not None:  # another codec or size than the publisher's: a shared transcoded rendition
            entry = self.hub.renditions.acquire(router, target, source.name, playback,
                                                lambda info: playback.stop(StreamStatus.FAILED, info), profile)
            playback.on_end.append(lambda: self.hub.renditions.release(entry, playback))
            playback.profile = profile
            router = entry.router
            neg = negotiate_play(m.sdp, {kind: track.producer.codec for kind, track in router.tracks.items()})
            log.info("play through a rendition session=%s stream=%s codec=%s profile=%s", self.id, q(m.name),
                     target, profile)
        if neg is None:
            self._fail_stream(m, error.info if error is not None else "No common codecs")
            return
        self.streams[m.media_session_id] = playback
        self.hub.registry.read(m.name, playback)
        playback.start(neg, router)

    @staticmethod
    def _profile(m: msg.PlayStream, source: Any, router: Any) -> tuple[int, int, int] | None:
        """(width, height, bit/s) when playStream asks for a smaller picture than published (spec §4.1: 0 = as
        published; `bitrate` in kbit/s, as WCS takes it, applies with a size)."""
        video = router.tracks.get("video")
        if video is None or video.producer.codec.name.upper() not in RENDITION_CODECS:
            return None
        return requested_profile(m, source)

    @staticmethod
    def _rendition_codec(sdp: str, router: Any, neg: Negotiation | None) -> str | None:
        """The other WebRTC video codec, when the offer takes it but not the publisher's; else None."""
        video = router.tracks.get("video")
        if video is None or (neg is not None and any(t.kind == "video" for t in neg.tracks)):
            return None
        target = {"VP8": "H264", "H264": "VP8"}.get(video.producer.codec.name.upper())
        if target is None:
            return None
        try:
            trial = negotiate_play(sdp, {"video": RENDITION_CODECS[target]})
        except SdpError:
            return None
        return target if any(t.kind == "video" for t in trial.tracks) else None

    def bind_media_transport(self, transport: MediaTransport) -> FeedPlayback | None:
        """A media socket presented this session's token (spec §11): bind it to the most recent unbound MSE or
        WSPlayer playback (the socket names no stream). None if there is none."""
        for stream in reversed(list(self.streams.values())):
            if isinstance(stream, FeedPlayback) and not stream.closed and not stream.bound:
                stream.bind(transport)
                return stream
        return None

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
        elif self.hub.cluster is not None:
            self._hold(self._available_in_cluster(m), "cluster available")
        else:
            self.send(msg.available_stream(m.media_session_id, False, Info.STREAM_NOT_FOUND))

    async def _available_in_cluster(self, m: msg.AvailableStream) -> None:
        assert self.hub.cluster is not None
        found = await self.hub.cluster.available(m.name)
        if found:
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
        self._spawn(self._snapshot(m), f"snapshot {self.id}")

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

    # --- teardown (server pings: keepalive.py) -----------------------------------------------------

    def close(self) -> None:
        """Release every stream of the session and the socket (idempotent)."""
        if self.closed:
            return
        self.closed = True  # from here on nothing more is sent to this client
        if self._hooking is not None and self._hooking is not asyncio.current_task():
            self._hooking.cancel()
        self._waiting.clear()
        for stream in list(self.streams.values()):
            if isinstance(stream, Publication):
                stream.stop(StreamStatus.UNPUBLISHED, Info.STOPPED_BY_SESSION_DISCONNECT,
                            end=EndReason.PUBLISHER_DISCONNECTED)
            else:
                stream.stop(StreamStatus.STOPPED, Info.STOPPED_BY_SESSION_DISCONNECT)
        self.hub.sessions.discard(self)
        self.hub.keepalive.discard(self)
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._close_socket()
        if self.hook is not None:
            if self.established:
                self.hook.event(hooks.CONNECTION_STATUS_EVENT, {"status": "DISCONNECTED"})
            self.hook.close()
        log.info("session closed session=%s", self.id)
