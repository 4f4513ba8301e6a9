"""REST recording control (spec §12, §14), for the REST API app to mount with `add_recording_routes`.

    POST /rest-api/stream/startRecording  {mediaSessionId, config?: {fileTemplate?, rotation?}}
    POST /rest-api/stream/stopRecording   {mediaSessionId}
    POST /rest-api/recorder/startup       (the newer name of startRecording)
    POST /rest-api/recorder/terminate     (the newer name of stopRecording)
    GET|POST /rest-api/recorder/find_all  → [{fileName, mediaSessionId, streamName, status[, info]}]
    GET|HEAD /client/records/<fileName>   the file, with Range (WCS serves records on its REST port too;
                                          the main port mounts the same handler)

Statuses: 200; 400 for a malformed body; 404 when no live publication has that mediaSessionId (or, for
stop, it is not being recorded); 500 when the recording cannot start (e.g. the records directory is not
writable), with the reason. Errors are JSON `{"status", "error", "message", "path"}` like the rest of the
API. `rotation` is accepted and ignored (files are not split).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..logs import q
from ..wcs.hub import Hub
from ..streams.recording import RecordingError, is_record_file_name

log = logging.getLogger("webcall.rest")

MAX_TEMPLATE = 1024
FINALIZE_WAIT = 10.0  # seconds a download waits for a stopped recording's file (Recordings.finish waits as long)
_REASONS = {400: "Bad Request", 404: "Not Found", 415: "Unsupported Media Type", 500: "Internal Server Error"}


class _Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda obj: json.dumps(obj, separators=(",", ":")))


def _error(request: web.Request, exc: _Error) -> web.Response:
    return _json({"status": exc.status, "error": _REASONS.get(exc.status, "Error"), "message": exc.message,
                  "path": request.path}, exc.status)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = b"" if request.method == "GET" else await request.read()
    if not raw.strip():
        return {}
    if request.content_type != "application/json" and not request.content_type.endswith("+json"):
        raise _Error(415, "Content-Type must be application/json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Error(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Error(400, "the body must be a JSON object")
    return body


def _media_session_id(body: dict[str, Any]) -> str:
    value = body.get("mediaSessionId")
    if not isinstance(value, str) or not value:
        raise _Error(400, "mediaSessionId is required")
    return value


def _template(body: dict[str, Any]) -> str | None:
    config = body.get("config")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise _Error(400, "config must be an object")
    template = config.get("fileTemplate")
    if template is not None and (not isinstance(template, str) or not template or len(template) > MAX_TEMPLATE):
        raise _Error(400, f"config.fileTemplate must be a non-empty string of at most {MAX_TEMPLATE} characters")
    return template


def record_file_handler(directory: str, finishing: Callable[[str], asyncio.Future[None] | None]):
    """GET /client/records/{name}: a recorded file, by a name the recorder could have made (no paths, no
    hidden files); aiohttp's FileResponse answers Range requests (206) and HEAD.

    A recording that has stopped is named to its publisher at once (`recordName` on UNPUBLISHED) while its file
    is still being finalized: a request for it waits (up to FINALIZE_WAIT) for the whole file instead of getting
    an empty or half-written one, or a 404 before the file takes its final name. `finishing(name)` is the
    recording's completion, or None when no recording of that name is being finalized."""

    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        done = finishing(name)
        if done is not None:
            await asyncio.wait([done], timeout=FINALIZE_WAIT)  # on timeout, what is there (the recording goes on)
        path = Path(directory) / name
        if not is_record_file_name(name) or not path.is_file():
            raise web.HTTPNotFound(text="No such record")
        return web.FileResponse(path)

    return handler


def add_recording_routes(router: web.UrlDispatcher, hub: Hub) -> None:
    """Mount the recording endpoints (and /client/records/) on a REST app's router."""

    async def start(request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            media_session_id = _media_session_id(body)
            template = _template(body)
            publication = hub.find_publication_by_id(media_session_id)
            if publication is None:
                raise _Error(404, "Stream not found")
            try:
                recording = publication.start_recording(template)
            except RecordingError as exc:
                log.warning("rest startRecording failed %s error=%s", publication.label, q(exc))
                raise _Error(500, str(exc)) from None
        except _Error as exc:
            return _error(request, exc)
        return _json({"mediaSessionId": media_session_id, "fileName": recording.file_name})

    async def stop(request: web.Request) -> web.Response:
        try:
            media_session_id = _media_session_id(await _body(request))
            publication = hub.find_publication_by_id(media_session_id)
            recording = publication.recording if publication is not None else None
            if recording is None or recording.stopped_at is not None:
                raise _Error(404, "Stream not found" if publication is None else "Stream is not being recorded")
            name = publication.stop_recording()
        except _Error as exc:
            return _error(request, exc)
        return _json({"mediaSessionId": media_session_id, "fileName": name})

    async def find_all(request: web.Request) -> web.Response:
        try:
            await _body(request)  # a body, if any, must still be well-formed
        except _Error as exc:
            return _error(request, exc)
        return _json([r.describe() for r in hub.recordings.list() if r.stopped_at is None])

    for path, handler in (("/rest-api/stream/startRecording", start), ("/rest-api/recorder/startup", start),
                          ("/rest-api/stream/stopRecording", stop), ("/rest-api/recorder/terminate", stop)):
        router.add_post(path, handler)
    router.add_post("/rest-api/recorder/find_all", find_all)
    router.add_get("/rest-api/recorder/find_all", find_all)
    router.add_get("/client/records/{name}", record_file_handler(hub.settings.records.directory,
                                                                  hub.recordings.finishing))
