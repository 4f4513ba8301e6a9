"""The WCS REST API (spec §12): request bodies in, response objects out — pure functions, no I/O.

Bodies are JSON objects. As in the SDK's rest-module, fields it leaves unset may be absent or null, and
unknown fields (`nodeId`, ...) are ignored. A bad body raises `RestError`, which the front end turns into
a 400 JSON answer.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .messages import MAX_NAME_LENGTH, _Bad, _identifier

STREAM_EVENT_TYPES = frozenset({"audioMuted", "audioUnmuted", "videoMuted", "videoUnmuted", "data"})
MUTE_EVENT_TYPES = STREAM_EVENT_TYPES - {"data"}


class RestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, reason: str, message: str, path: str) -> dict[str, Any]:
    return {"status": status, "error": reason, "message": message, "path": path}


# --- field readers --------------------------------------------------------------------------------


def _get(body: dict[str, Any], key: str, read, required: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise RestError(400, f"{key} is required")
        return None
    try:
        return read(value)
    except _Bad as exc:
        raise RestError(400, f"{key} {exc}") from None


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("must be a boolean")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad("must be a list of strings")
    return tuple(value)


def _ids(value: Any) -> tuple[str, ...]:
    return tuple(_identifier(v) for v in _str_list(value))


def _event_type(value: Any) -> str:
    if not isinstance(value, str) or value not in STREAM_EVENT_TYPES:  # a list or object is unhashable
        raise _Bad(f"must be one of {', '.join(sorted(STREAM_EVENT_TYPES))}")
    return value


def _object_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RestError(400, "the body must be a JSON object")
    return body


# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """A /stream/find or /stream/terminate filter; every field left None matches anything."""

    name: str | None = None
    media_session_id: str | None = None
    media_session_ids: tuple[str, ...] | None = None
    published: bool | None = None
    status: str | None = None
    display: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return (self.name, self.media_session_id, self.media_session_ids, self.published, self.status) == (
            None, None, None, None, None)

    def matches(self, *, name: str, media_session_id: str, published: bool, status: str) -> bool:
        return (
            (self.name is None or self.name == name)
            and (self.media_session_id is None or self.media_session_id == media_session_id)
            and (self.media_session_ids is None or media_session_id in self.media_session_ids)
            and (self.published is None or self.published == published)
            and (self.status is None or self.status == status)
        )


def parse_stream_query(body: Any) -> StreamQuery:
    body = _object_body(body)
    return StreamQuery(
        name=_get(body, "name", _identifier),
        media_session_id=_get(body, "mediaSessionId", _identifier),
        media_session_ids=_get(body, "mediaSessionIds", _ids),
        published=_get(body, "published", _bool),
        status=_get(body, "status", _identifier),
        display=_get(body, "display", _str_list) or (),
    )


def parse_snapshot(body: Any) -> str:
    """/stream/snapshot {streamName} → the stream name."""
    return _get(_object_body(body), "streamName", _identifier, required=True)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    stream_name: str
    type: str
    payload: Any


def parse_stream_event(body: Any) -> StreamEvent:
    """/stream/event/send {streamName, payload, type?}; `type` defaults to "data" (spec §9)."""
    body = _object_body(body)
    name = _get(body, "streamName", _identifier, required=True)
    event_type = _get(body, "type", _event_type) or "data"
    if "payload" not in body and event_type == "data":
        raise RestError(400, "payload is required")
    return StreamEvent(name, event_type, body.get("payload"))


@dataclass(frozen=True, slots=True)
class DataMessage:
    session_id: str
    operation_id: str
    payload: Any


def parse_data_send(body: Any) -> DataMessage:
    """/data/send {sessionId, operationId?, payload} (nodeId is ignored: this server is one node)."""
    body = _object_body(body)
    session_id = _get(body, "sessionId", _identifier, required=True)
    operation_id = _get(body, "operationId", _identifier) or str(uuid.uuid4())
    if "payload" not in body:
        raise RestError(400, "payload is required")
    return DataMessage(session_id, operation_id, body["payload"])


@dataclass(frozen=True, slots=True)
class ConnectionQuery:
    session_id: str | None = None
    app_key: str | None = None
    client_version: str | None = None

    def matches(self, *, session_id: str, app_key: str, client_version: str | None) -> bool:
        return (
            (self.session_id is None or self.session_id == session_id)
            and (self.app_key is None or self.app_key == app_key)
            and (self.client_version is None or self.client_version == client_version)
        )


def parse_connection_query(body: Any) -> ConnectionQuery:
    body = _object_body(body)
    return ConnectionQuery(
        session_id=_get(body, "sessionId", _identifier),
        app_key=_get(body, "appKey", _identifier),
        client_version=_get(body, "clientVersion", _identifier),
    )


def parse_session_id(body: Any) -> str:
    """/connection/terminate {sessionId}."""
    return _get(_object_body(body), "sessionId", _identifier, required=True)


# --- responses ------------------------------------------------------------------------------------


def stream_object(
    *,
    app_key: str,
    session_id: str,
    media_session_id: str,
    name: str,
    published: bool,
    status: str,
    has_audio: bool,
    has_video: bool,
    audio_codec: str | None,
    video_codec: str | None,
    record: bool,
    width: int,
    height: int,
    create_date: int,
    request: dict[str, Any],
    fps: int,
    metrics: dict[str, int],
    media_provider: str = "WebRTC",
) -> dict[str, Any]:
    """A stream as /stream/find answers it (spec §12). The SDP is left out (it holds ICE credentials)."""

    def requested(key: str, default: int | bool = 0) -> int | bool:
        """What the client asked for in its publishStream/playStream, if it is of the right type."""
        value = request.get(key)
        if isinstance(default, bool):
            return value if isinstance(value, bool) else default
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    obj: dict[str, Any] = {
        "appKey": app_key,
        "sessionId": session_id,
        "mediaSessionId": media_session_id,
        "name": name,
        "published": published,
        "hasVideo": has_video,
        "hasAudio": has_audio,
        "status": status,
        "videoCodec": video_codec,
        "record": record,
        "width": width,
        "height": height,
        "bitrate": requested("bitrate"),
        "minBitrate": requested("minBitrate"),
        "maxBitrate": requested("maxBitrate"),
        "quality": requested("quality"),
        "history": False,
        "gop": 0,
        "fps": fps,
        "audioBitrate": 0,
        "codecImpl": "",
        "transport": "UDP",
        "cvoExtension": requested("cvoExtension", False),
        "createDate": create_date,
        "mediaType": "publish" if published else "play",
        "mediaProvider": media_provider,
        "metrics": metrics,
    }
    if audio_codec is not None:  # WCS leaves audioCodec out when there is no audio track
        obj["audioCodec"] = audio_codec
    return obj


def connection_object(
    *, app_key: str, session_id: str, status: str, create_date: int, connection: dict[str, Any] | None,
    streams: list[str],
) -> dict[str, Any]:
    """A connection as /connection/find answers it: only what the client declared about itself.

    Never the authToken nor any sip* credential the client sent.
    """
    client = connection or {}
    obj: dict[str, Any] = {
        "appKey": app_key,
        "sessionId": session_id,
        "status": status,
        "createDate": create_date,
        "mediaSessionIds": streams,
    }
    for key in ("mediaProviders", "clientVersion", "clientOSVersion", "clientBrowserVersion", "keepAlive",
                "custom", "msePacketizationVersion"):
        if key in client:
            obj[key] = client[key]
    return obj


__all__ = [
    "MAX_NAME_LENGTH", "RestError", "StreamQuery", "StreamEvent", "DataMessage", "ConnectionQuery",
    "parse_stream_query", "parse_snapshot", "parse_stream_event", "parse_data_send", "parse_connection_query",
    "parse_session_id", "stream_object", "connection_object", "error_body", "STREAM_EVENT_TYPES",
    "MUTE_EVENT_TYPES",
]
