"""The aiohttp front: WebSocket signalling and demo pages on one port, the REST API on another, and the
server's lifecycle: `start`, `shutdown` (graceful: SIGTERM, see cli.py), `stop`, and `reload_tls` (SIGHUP).

Thin on purpose: frames in → `Session.handle_text`; `Session.send` → the frame written to the connection at
once (`wsout.Outbox`), so the streams layer can emit messages synchronously from media events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from ..eventloop import loop_name
from ..hooks.client import Hooks, HookSettings
from ..hooks.origins import origin_allowed, parse_allow_list
from ..logs import q
from ..media.dtls import DtlsIdentity
from ..media.plane import MediaPlane
from ..media.port import MediaPort
from ..limits import Limits
from ..streams.recording import RecordSettings
from ..wcs.hub import Hub, StreamSettings
from ..workers.control import APP, WorkerPlane
from ..workers.media_worker import Settings as WorkerSettings
from ..workers.supervisor import resolve_worker_count
from ..wcs import messages as wcs_messages
from ..wcs.session import Session
from ..whip import WhipFrontEnd
from . import media_socket
from .config import Config
from .rest_recording import record_file_handler
from .rest import RestApi, health
from .tls import reload_context, server_context
from .wsout import Outbox

log = logging.getLogger("webcall.server")

OUTGOING_LIMIT_BYTES = 1 << 20  # a client with this much of our output unsent is not reading: drop it


@web.middleware
async def _log_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A handler's exception (a bug of ours) in webcall's log: aiohttp's own line would hide it from whoever
    reads webcall's. A client that went away is no bug. aiohttp still answers 500 as before."""
    try:
        return await handler(request)
    except (web.HTTPException, ConnectionError):
        raise
    except Exception:
        log.exception("request failed method=%s path=%s", q(request.method), q(request.path))
        raise


def bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, for aiohttp's SockSite to serve later: the kernel
    queues connections meanwhile. The first address `host` resolves to (TCPSite would bind them all)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class WebcallServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.port: MediaPort | None = None  # the media port of a single-process server
        self.workers: WorkerPlane | None = None  # the media workers, with --workers 2 or more
        self.hub: Hub | None = None
        self.cluster: Any = None  # cluster/node.py's ClusterNode with --cluster-redis
        self._runner: web.AppRunner | None = None
        self._rest_runner: web.AppRunner | None = None
        self.http_port = 0
        self.media_port = 0
        self.media_tcp_port = 0  # bound ICE-TCP port (of worker 0 with workers); 0 while it is off
        self.rest_port = 0  # bound REST port; 0 while the REST API is off
        self.tls_port = 0  # bound HTTPS/WSS port; 0 while TLS is off
        self._sockets: set[web.WebSocketResponse] = set()
        self.allowed_origins = parse_allow_list(config.allow_origins)  # WCS allow_domains; empty = any
        self.refused_origins = 0
        self._tls_context: ssl.SSLContext | None = None  # reloaded in place by SIGHUP

    async def start(self) -> None:
        c = self.config
        ips = c.announced_ips()
        settings = StreamSettings(
            video_codecs=c.video_codec_list, connect_timeout=c.connect_timeout, consent_timeout=c.consent_timeout,
            max_bitrate=c.max_bitrate, ping_interval=c.ping_interval, ping_probes=c.ping_probes,
            rate_interval=c.rate_interval, snapshot_timeout=c.snapshot_timeout, keep_alive_interval=c.keep_alive_interval,
            records=RecordSettings(directory=c.records_dir, template=c.record_template, formats=c.record_formats,
                                   mp4_audio=c.record_mp4_audio, fragment=c.record_fragment),
            rtp_activity_timeout=c.rtp_activity_timeout, bitrate_ceiling=c.publisher_bitrate_ceiling,
            bitrate_grace=c.bitrate_grace, keyframe_interval=c.keyframe_interval,
            limits=Limits(sessions_per_ip=c.max_sessions_per_ip, streams_per_session=c.max_streams_per_session,
                          players_per_stream=c.max_players_per_stream, publishers=c.max_publishers,
                          messages_per_second=c.max_messages_per_second),
        )
        self.hub = Hub(settings, await self._media_plane(settings, ips), Hooks(HookSettings.from_config(c)))
        self.hub.start()
        app = web.Application(middlewares=[_log_errors])
        app.router.add_get("/", self._root)
        app.router.add_get("/health", self._health)
        app.router.add_get("/streams", self._streams)
        app.router.add_get("/lb", self._lb)
        app.router.add_get("/player", self._page("player.html"))
        app.router.add_get("/sdk/flashphoner.js", self._sdk)
        for worker in ("WSReceiver2.js", "video-worker2.js"):  # WSPlayer's workers (spec §11.2), from the SDK
            app.router.add_get(f"/sdk/{worker}", self._sdk_file(worker))
        app.router.add_static("/static/", c.static_dir, show_index=False)
        app.router.add_get("/client/records/{name}",  # spec §14, with Range
                           record_file_handler(c.records_dir, self.hub.recordings.finishing))
        self.whip = WhipFrontEnd(self.hub.registry, self.hub.plane, settings, c.whip_token,  # WHIP and WHEP
                                 hooks=self.hub.hooks, ice_servers=c.whip_ice_servers,
                                 recordings=self.hub.recordings)
        self.whip.add_routes(app)
        self.hub.listings.append(self.whip.streams)
        app.router.add_get("/{path:.*}", self._any_path)  # last: the WCS WebSocket on any path not routed above
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # The ports are bound (and queue connections) first, because the cluster entry names them, but served
        # only once the node is a member: a publish accepted before would not be claimed in Redis, and another
        # node asked for that name at once would say "Stream not found". /health (REST) comes up last.
        http_socket = bound_socket(c.host, c.port)
        self.http_port = http_socket.getsockname()[1]
        tls_socket = None
        if c.tls_port >= 0:
            context = await asyncio.get_running_loop().run_in_executor(
                None, server_context, c.tls_cert, c.tls_key, c.tls_dir, ips)
            self._tls_context = context
            tls_socket = bound_socket(c.host, c.tls_port)
            self.tls_port = tls_socket.getsockname()[1]
        if c.cluster_redis:
            await self._join_cluster(ips)
        await web.SockSite(self._runner, http_socket).start()
        if tls_socket is not None:
            await web.SockSite(self._runner, tls_socket, ssl_context=self._tls_context).start()
        if c.rest_port >= 0:
            rest_app = RestApi(self.hub, c.max_message_size).app()
            rest_app.router.add_get("/cluster", self._cluster_state)  # the node's relays and counters
            self._rest_runner = web.AppRunner(rest_app, access_log=None)
            await self._rest_runner.setup()
            rest_site = web.TCPSite(self._rest_runner, c.rest_host, c.rest_port)
            await rest_site.start()
            self.rest_port = rest_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        media_ports = self.workers.media_ports() if self.workers else [self.media_port]
        tcp_ports = self.workers.media_tcp_ports() if self.workers else [self.media_tcp_port]
        log.info("listening http+ws=%s:%d https+wss=%s media=udp/%s:%s tcp/%s workers=%d rest=%s announce=%s loop=%s",
                 c.host, self.http_port, self.tls_port or "off", c.media_host, ",".join(map(str, media_ports)),
                 ",".join(map(str, tcp_ports)) if any(tcp_ports) else "off",
                 self.workers.count if self.workers else 0,
                 f"{c.rest_host}:{self.rest_port}" if self._rest_runner else "off", ",".join(ips), loop_name())

    async def _join_cluster(self, ips: list[str]) -> None:
        """--cluster-redis: register in the directory, serve and pull streams (webcall/cluster/)."""
        from ..cluster.node import ClusterNode, ClusterSettings, default_node_id  # needs redis: only here
        c, hub = self.config, self.hub
        assert hub is not None and (self.port is not None or self.workers is not None)
        relay_host = c.relay_host or ips[0]
        settings = ClusterSettings(
            redis_url=c.cluster_redis, node_id=c.node_id or default_node_id(self.http_port),
            relay_bind=(c.relay_host or c.media_host, c.relay_port), relay_host=relay_host, server=ips[0],
            ws_port=self.http_port, wss_port=self.tls_port, ttl=c.cluster_ttl, max_out=c.relay_max_out)

        def terminate(ids: list[str]) -> list[str]:
            return hub.terminate([s for s in hub.streams() if s.media_session_id in ids])

        self.cluster = ClusterNode(settings, hub.registry, self.port, load=lambda: len(hub.streams()),
                                   describe=lambda: [s.describe() for s in hub.streams() if not s.closed],
                                   terminate=terminate, workers=self.workers,
                                   deliver_event=hub.deliver_stream_event)
        await self.cluster.start()
        hub.cluster = self.cluster
        if self.whip is not None:
            self.whip.cluster = self.cluster

    async def _cluster_state(self, request: web.Request) -> web.Response:
        if self.cluster is None:
            raise web.HTTPNotFound(text="not a cluster node (--cluster-redis)")
        return web.json_response(self.cluster.stats())

    async def _lb(self, request: web.Request) -> web.Response:
        """The SDK's lbUrl (spec §15): the least-loaded live node; this one without a cluster."""
        if self.cluster is not None:
            return web.json_response(await self.cluster.least_loaded())
        ips = self.config.announced_ips()
        return web.json_response({"server": ips[0], "ws": self.http_port, "wss": self.tls_port})

    async def _media_plane(self, settings: StreamSettings, ips: list[str]) -> MediaPlane | WorkerPlane:
        """One process (--workers 1): the media port is ours. More: worker i owns --media-port + i."""
        c = self.config
        count = resolve_worker_count(c.workers)
        if count == 1:
            self.port = MediaPort(c.fanout_core, c.fanout_threads, c.max_unverified_datagrams, c.max_dtls_handshakes,
                                  c.ingest)
            self.media_port = await self.port.start(c.media_host, c.media_port)
            if c.media_tcp_port_number() >= 0:
                self.media_tcp_port = await self.port.start_tcp(c.media_host, c.media_tcp_port_number())
            identity = await asyncio.get_running_loop().run_in_executor(None, DtlsIdentity)
            return MediaPlane(self.port, identity, settings, tuple((ip, self.media_port) for ip in ips),
                              tuple((ip, self.media_tcp_port) for ip in ips) if self.media_tcp_port else ())
        worker_settings = WorkerSettings(
            connect_timeout=c.connect_timeout, consent_timeout=c.consent_timeout, max_bitrate=c.max_bitrate,
            fanout_core=c.fanout_core, fanout_threads=c.fanout_threads, ingest=c.ingest,
            snapshot_timeout=c.snapshot_timeout,
            stats_interval=c.rate_interval, rtp_activity_timeout=c.rtp_activity_timeout,
            bitrate_ceiling=c.publisher_bitrate_ceiling, bitrate_grace=c.bitrate_grace,
            keyframe_interval=c.keyframe_interval, max_unverified_datagrams=c.max_unverified_datagrams,
            max_dtls_handshakes=c.max_dtls_handshakes,
            media_tcp_port=c.media_tcp_port_number())
        app = APP
        if c.cluster_redis:  # each worker has its own relay socket between nodes (cluster/worker.py), on port + index
            worker_settings.cluster_relay_host = c.relay_host or c.media_host
            worker_settings.cluster_relay_port = c.relay_port
            worker_settings.cluster_ttl = c.cluster_ttl
            app = "webcall.cluster.worker:setup"
        self.workers = WorkerPlane(count, mode=c.placement, settings=worker_settings, media_host=c.media_host,
                                   media_port=c.media_port, announced_ips=ips, log_level=c.log_level, app=app,
                                   event_loop=c.event_loop)
        await self.workers.start()
        self.media_port = self.workers.media_ports()[0]
        self.media_tcp_port = self.workers.media_tcp_ports()[0]
        return self.workers

    async def shutdown(self) -> None:
        """Graceful stop (SIGTERM): refuse new sessions, end every stream with "Server shutdown", let the
        clients' sockets flush and close, finalize recordings, post the queued hook events, then stop.
        The caller bounds it with --shutdown-timeout."""
        hub = self.hub
        if hub is None:
            return
        log.info("shutting down sessions=%d streams=%d", len(hub.sessions), len(hub.streams()))
        hub.shut_down()
        deadline = time.monotonic() + 5.0  # each socket says goodbye (close frame), then its handler returns
        while self._sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await hub.recordings.finish()
        await hub.hooks.drain(hub.hooks.settings.timeout + 1.0)
        await self.stop()
        log.info("shut down")

    def reload_tls(self) -> bool:
        """SIGHUP: load the certificate and key again into the live context; new handshakes use them, open
        connections keep theirs. False (and the old certificate kept) if the files cannot be loaded."""
        if self._tls_context is None:
            return False
        c = self.config
        try:
            reload_context(self._tls_context, c.tls_cert, c.tls_key, c.tls_dir, self.config.announced_ips())
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("tls reload failed, keeping the old certificate: %s", exc)
            return False
        log.info("tls certificate reloaded cert=%s", c.tls_cert or "self-signed")
        return True

    def kill_workers(self) -> None:
        """The hard exit's last act: no media worker may outlive the control process."""
        if self.workers is not None:
            for handle in list(self.workers.supervisor.workers.values()):
                with contextlib.suppress(ProcessLookupError):
                    handle.process.kill()

    async def stop(self) -> None:
        if self.hub is not None:
            for session in list(self.hub.sessions):
                session.close()
        for ws in list(self._sockets):
            await ws.close()
        if self.hub is not None:
            await self.hub.recordings.finish()  # SIGTERM: every recording's file is finalized
        for runner in (self._rest_runner, self._runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._rest_runner = None
        if self.cluster is not None:
            await self.cluster.stop()  # its names are freed in Redis at once, not after the ttl
            self.cluster = None
        if self.hub is not None:
            await self.hub.close()
        if self.port is not None:
            await self.port.stop()
        if self.workers is not None:
            await self.workers.stop()

    # --- HTTP -------------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        return web.FileResponse(Path(self.config.static_dir) / "index.html")

    async def _any_path(self, request: web.Request) -> web.StreamResponse:
        """The vendor's example pages open ws://host:8080/<streamName>: any path upgrades to the WCS WebSocket."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        raise web.HTTPNotFound()

    async def _health(self, request: web.Request) -> web.Response:
        assert self.hub is not None
        return web.json_response(health(self.hub))

    async def _streams(self, request: web.Request) -> web.Response:
        """Live publications for the demo's home page: name, status, size, codecs and live rates."""
        assert self.hub is not None
        out = []
        node = {"node": self.cluster.node_id} if self.cluster is not None else {}
        for stream in self.hub.streams():
            if stream.published and not stream.closed:
                obj = stream.describe()
                out.append({k: obj.get(k) for k in ("name", "status", "width", "height", "videoCodec",
                                                     "audioCodec", "createDate", "metrics")}
                           | {"players": len(stream.players),
                              "feeds": [f for f in self.hub.feeds.describe() if f["label"] == stream.name]} | node)
        if self.cluster is not None:  # the other nodes' publications (their player counts are theirs)
            out += [{k: obj.get(k) for k in ("name", "status", "width", "height", "videoCodec", "audioCodec",
                                             "createDate", "metrics", "node")}
                    for obj in await self.cluster.remote_streams() if obj.get("published")]
        return web.json_response(sorted(out, key=lambda s: s["name"]))

    def _page(self, name: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(Path(self.config.static_dir) / name)
        return handler

    async def _sdk(self, request: web.Request) -> web.StreamResponse:
        path = Path(self.config.sdk_file)
        if not path.is_file():
            raise web.HTTPNotFound(text="SDK not installed: run `make sdk`")
        return web.FileResponse(path)

    def _sdk_file(self, name: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            path = Path(self.config.sdk_file).parent / "examples" / "demo" / "dependencies" / "websocket-player" / name
            if not path.is_file():
                raise web.HTTPNotFound(text="SDK not installed: run `make sdk`")
            return web.FileResponse(path)
        return handler

    # --- WebSocket signalling ---------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        assert self.hub is not None
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, self.allowed_origins):
            log.info("websocket refused origin=%s", origin)
            self.refused_origins += 1
            raise web.HTTPForbidden(text="Origin not allowed")
        ws = web.WebSocketResponse(max_msg_size=self.config.max_message_size, heartbeat=None)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        refusal = self.hub.refuse_session(peer[0] if peer else "unknown")
        if refusal is not None:  # over --max-sessions-per-ip, or shutting down: say why, then close
            await ws.send_str(wcs_messages.fail(refusal))
            await ws.close()
            return ws
        self._sockets.add(ws)
        # A media socket (spec §11) says so in its first message. A client that says nothing is dropped as a
        # silent session would be (its pings unanswered).
        silence = self.config.ping_interval * (self.config.ping_probes + 1)
        try:
            first = await ws.receive(timeout=silence)
        except asyncio.TimeoutError:
            first = None
        if first is not None and first.type == WSMsgType.TEXT:
            is_media, token = media_socket.media_token(first.data)
            if is_media:
                try:
                    await media_socket.serve(ws, self.hub, token, request.transport)
                finally:
                    self._sockets.discard(ws)
                return ws
        if first is None or first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            self._sockets.discard(ws)
            await ws.close()
            return ws
        closing: list[asyncio.Task[bool]] = []

        def close_socket() -> None:  # the session ended on our side: say goodbye once, in the background
            if not closing and not ws.closed:
                closing.append(asyncio.get_running_loop().create_task(ws.close(), name=f"ws-close {session.id}"))

        def stalled() -> None:
            log.warning("client not reading, closing session=%s", session.id)
            session.close()

        assert request.transport is not None  # prepared: the connection is open
        outbox = Outbox(request.transport, OUTGOING_LIMIT_BYTES, stalled)
        sock = request.transport.get_extra_info("sockname")
        remote = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        local = f"{sock[0]}:{sock[1]}" if sock else "unknown"
        session = Session(self.hub, outbox.send, close_socket, remote, local, origin)
        log.info("websocket open session=%s", session.id)
        try:
            session.handle_text(first.data)
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    session.handle_text(frame.data)
                elif frame.type == WSMsgType.BINARY:
                    session.handle_text(frame.data)  # JSON in a binary frame is still JSON; garbage fails
                if session.closed:
                    break
        except Exception:  # a bug of ours: said in our log (aiohttp's would hide it), and this session alone ends
            log.exception("session failed session=%s", session.id)
        finally:
            session.close()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, ConnectionError, RuntimeError):
                await asyncio.wait_for(closing[0] if closing else ws.close(), 5)
            self._sockets.discard(ws)
            log.info("websocket closed session=%s code=%s", session.id, ws.close_code)
        return ws
