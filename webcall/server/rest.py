"""The WCS REST API (spec §12), /metrics and /health, on their own port (`rest_port`, default 8081).

Requests are POST with a JSON body (`Content-Type: application/json` — which also means a web page on
another origin cannot forge one without a CORS preflight this server never grants), or GET with no
body for the read-only queries, as the SDK's rest-module sends `find_all`. Bodies are parsed by
`wcs/rest.py`; what is read or done goes through the hub. Errors are JSON:
`{"status", "error", "message", "path"}` — 400 bad body, 404 nothing found, 415 not JSON, 500 failure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..logs import q
from ..streams.snapshots import SnapshotError
from ..wcs import rest
from ..wcs.hub import Hub
from ..wcs.rest import RestError
from ..wcs.status import Info
from ..debug import DEBUG_ENV, debug_heap, debug_objects
from ..eventloop import loop_name
from . import prometheus
from .rest_recording import add_recording_routes

log = logging.getLogger("webcall.rest")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda obj: json.dumps(obj, separators=(",", ":")))


def _not_found(message: str) -> RestError:
    return RestError(404, message)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RestError as exc:
        return _json(rest.error_body(exc.status, _reason(exc.status), exc.message, request.path), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json(rest.error_body(exc.status, exc.reason, exc.reason, request.path), exc.status)
    except Exception:
        log.exception("rest error path=%s", q(request.path))
        return _json(rest.error_body(500, "Internal Server Error", "internal error", request.path), 500)


def _reason(status: int) -> str:
    return {400: "Bad Request", 404: "Not Found", 415: "Unsupported Media Type", 500: "Internal Server Error"}.get(
        status, "Error")


async def _body(request: web.Request, required: bool = False) -> Any:
    """The JSON body; {} for a GET or an empty body where none is required."""
    raw = b"" if request.method == "GET" else await request.read()
    if not raw.strip():
        if required:
            raise RestError(400, "a JSON body is required")
        return {}
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise RestError(415, "Content-Type must be application/json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RestError(400, "the body is not valid JSON") from None


class RestApi:
    def __init__(self, hub: Hub, max_body: int) -> None:
        self.hub = hub
        self.max_body = max_body

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=self.max_body)
        routes = [
            ("/rest-api/stream/find", self.stream_find, True),
            ("/rest-api/stream/find_all", self.stream_find_all, True),
            ("/rest-api/stream/metrics", self.stream_metrics, False),
            ("/rest-api/stream/terminate", self.stream_terminate, False),
            ("/rest-api/stream/snapshot", self.stream_snapshot, False),
            ("/rest-api/stream/event/send", self.stream_event_send, False),
            ("/rest-api/data/send", self.data_send, False),
            ("/rest-api/connection/find", self.connection_find, True),
            ("/rest-api/connection/find_all", self.connection_find_all, True),
            ("/rest-api/connection/terminate", self.connection_terminate, False),
        ]
        for path, handler, readonly in routes:
            app.router.add_post(path, handler)
            if readonly:
                app.router.add_get(path, handler)
        add_recording_routes(app.router, self.hub)  # startRecording, stopRecording, recorder/*, client/records
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        if os.environ.get(DEBUG_ENV) == "1":  # soak/leak hunting only: never on in production
            app.router.add_get("/debug/objects", self.debug_objects)
            app.router.add_get("/debug/heap", self.debug_heap)
        return app

    # --- streams ------------------------------------------------------------------------------------

    async def _described(self, query: rest.StreamQuery) -> list[dict[str, Any]]:
        """Stream objects matching `query`: this node's, and with a cluster every live node's (each with its
        `node`), oldest first."""
        cluster = self.hub.cluster
        if cluster is None:
            return [s.describe() for s in self.hub.find_streams(query)]
        found = [s.describe() | {"node": cluster.node_id} for s in self.hub.find_streams(query)]
        found += [obj for obj in await cluster.remote_streams()
                  if query.matches(name=obj.get("name", ""), media_session_id=obj.get("mediaSessionId", ""),
                                   published=bool(obj.get("published")), status=str(obj.get("status")))]
        return sorted(found, key=lambda o: (o.get("createDate", 0), o.get("mediaSessionId", "")))

    async def stream_find(self, request: web.Request) -> web.Response:
        query = rest.parse_stream_query(await _body(request))
        found = await self._described(query)
        if not found:
            raise _not_found(Info.STREAM_NOT_FOUND)
        return _json(found)

    async def stream_find_all(self, request: web.Request) -> web.Response:
        rest.parse_stream_query(await _body(request))  # a body, if any, must still be well-formed
        return _json(await self._described(rest.StreamQuery()))

    async def stream_metrics(self, request: web.Request) -> web.Response:
        query = rest.parse_stream_query(await _body(request, required=True))
        if query.media_session_id is None:
            raise RestError(400, "mediaSessionId is required")
        found = self.hub.find_streams(query)
        if not found:
            raise _not_found(Info.STREAM_NOT_FOUND)
        return _json(found[0].metrics())

    async def stream_terminate(self, request: web.Request) -> web.Response:
        """{mediaSessionId} | {mediaSessionIds} | {name, published, status} filters; an explicit {} stops all."""
        query = rest.parse_stream_query(await _body(request, required=True))
        found = self.hub.find_streams(query)
        remote: dict[str, list[str]] = {}  # with a cluster: the other nodes' streams, each stopped by its node
        if self.hub.cluster is not None:
            for obj in await self._described(query):
                if obj.get("node") != self.hub.cluster.node_id:
                    remote.setdefault(obj["node"], []).append(obj["mediaSessionId"])
        if not found and not remote:
            raise _not_found(Info.STREAM_NOT_FOUND)
        stopped = self.hub.terminate(found, Info.STOPPED_BY_REST_TERMINATE)
        if remote and self.hub.cluster is not None:
            stopped += await self.hub.cluster.terminate_remote(remote)
        log.info("rest terminate streams=%d mediaSessionIds=%s", len(stopped), q(",".join(stopped)))
        return _json({"terminated": stopped})

    async def stream_snapshot(self, request: web.Request) -> web.Response:
        name = rest.parse_snapshot(await _body(request, required=True))
        try:
            png = await self.hub.snapshot(name)
        except SnapshotError as exc:
            raise RestError(404 if str(exc) == Info.STREAM_NOT_FOUND else 500, str(exc)) from None
        return _json({"data": base64.b64encode(png).decode("ascii")})

    async def stream_event_send(self, request: web.Request) -> web.Response:
        event = rest.parse_stream_event(await _body(request, required=True))
        delivered = self.hub.relay_event(event.stream_name, event.type, event.payload)
        if delivered is None:
            raise _not_found(Info.STREAM_NOT_FOUND)
        log.info("rest stream event stream=%s type=%s players=%d", q(event.stream_name), event.type, delivered)
        return _json({"delivered": delivered})

    # --- connections ----------------------------------------------------------------------------

    async def data_send(self, request: web.Request) -> web.Response:
        data = rest.parse_data_send(await _body(request, required=True))
        session = self.hub.find_session(data.session_id)
        if session is None or not session.established:
            raise _not_found(Info.SESSION_DOES_NOT_EXIST)
        session.push_data(data.operation_id, data.payload)
        log.info("rest data sent session=%s operationId=%s", session.id, q(data.operation_id))
        return _json({"operationId": data.operation_id})

    def _describe_session(self, session) -> dict[str, Any]:
        return rest.connection_object(
            app_key=session.app_key, session_id=session.id,
            status="ESTABLISHED" if session.established else "PENDING", create_date=session.create_date,
            connection=session.connection, streams=list(session.streams),
        )

    async def connection_find(self, request: web.Request) -> web.Response:
        query = rest.parse_connection_query(await _body(request))
        found = self.hub.find_sessions(query)
        if not found:
            raise _not_found(Info.SESSION_DOES_NOT_EXIST)
        return _json([self._describe_session(s) for s in found])

    async def connection_find_all(self, request: web.Request) -> web.Response:
        rest.parse_connection_query(await _body(request))
        return _json([self._describe_session(s) for s in self.hub.find_sessions(rest.ConnectionQuery())])

    async def connection_terminate(self, request: web.Request) -> web.Response:
        session_id = rest.parse_session_id(await _body(request, required=True))
        session = self.hub.find_session(session_id)
        if session is None:
            raise _not_found(Info.SESSION_DOES_NOT_EXIST)
        log.info("rest terminate session=%s", session.id)
        session.close()
        return _json({"terminated": [session_id]})

    # --- operations -------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        text = prometheus.render(self.hub, self.hub.plane.port)
        return web.Response(body=text.encode(), headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def health(self, request: web.Request) -> web.Response:
        return _json(health(self.hub))

    async def debug_heap(self, request: web.Request) -> web.Response:
        """malloc's view of this process (and each media worker's): bytes in use, free but kept; `?trim=1` first
        gives free memory back to the system (malloc_trim). In-use bytes that keep growing are a leak; RSS that
        grows while they do not is fragmentation."""
        trim = request.query.get("trim") == "1"
        collect = request.query.get("gc") == "1"
        out = debug_heap(trim, collect)
        supervisor = getattr(self.hub.plane, "supervisor", None)
        if supervisor is not None:
            out["workers"] = {}
            for index in sorted(supervisor.workers):
                try:
                    out["workers"][str(index)] = await supervisor.request(index, "debug_heap", timeout=5, trim=trim,
                                                                          collect=collect)
                except Exception as exc:  # noqa: BLE001 - a debug aid: say what failed
                    out["workers"][str(index)] = {"error": repr(exc)}
        return _json(out)

    async def debug_objects(self, request: web.Request) -> web.Response:
        """Live objects counted by type (gc.get_objects after a collection), the `top` largest counts; with
        tracemalloc running (PYTHONTRACEMALLOC=N), also the allocation sites holding the most memory."""
        top = int(request.query.get("top", "60"))
        out = debug_objects(top)
        supervisor = getattr(self.hub.plane, "supervisor", None)  # media workers: theirs too
        if supervisor is not None:
            out["workers"] = {}
            for index in sorted(supervisor.workers):
                try:
                    out["workers"][str(index)] = await supervisor.request(index, "debug_objects", timeout=20, top=top)
                except Exception as exc:  # noqa: BLE001 - a debug aid: say what failed
                    out["workers"][str(index)] = {"error": repr(exc)}
        return _json(out)


def health(hub: Hub) -> dict[str, Any]:
    streams = hub.streams()
    return {
        "status": "ok",
        "sessions": len(hub.sessions),
        "streams": sum(1 for s in streams if s.published and not s.closed),
        "players": sum(1 for s in streams if not s.published and not s.closed),
        "tasks": len(asyncio.all_tasks()),  # this process's asyncio tasks (a leak shows as a climb)
        "threads": threading.active_count(),
        "event_loop": loop_name(),  # this process's (webcall/eventloop.py); each worker says its own in `hello`
    }
