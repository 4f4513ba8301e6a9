"""Sans-I/O codec for the WCS "Raw WebSocket API" (spec §0-§10).

``parse_message`` turns one client text frame into a typed, validated message
or raises ``ProtocolError``; the builders below produce server frames. Nothing
here touches sockets, asyncio or server state.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from .status import Info

__all__ = [
    "ProtocolError",
    "Connection",
    "PublishStream",
    "PlayStream",
    "UnPublishStream",
    "StopStream",
    "AvailableStream",
    "Ping",
    "Pong",
    "SendData",
    "SendStreamEvent",
    "Snapshot",
    "Ignored",
    "Message",
    "IGNORED_MESSAGES",
    "MAX_FRAME_CHARS",
    "MAX_NAME_LENGTH",
    "MAX_SDP_LENGTH",
    "parse_message",
    "encode",
    "get_user_data",
    "get_version",
    "ping",
    "pong",
    "set_remote_sdp",
    "stream_status",
    "notify_audio_codec",
    "notify_video_format",
    "available_stream",
    "notify_stream_event",
    "data_status",
    "on_data_event",
    "fail",
    "video_rate",
]

# Defensive limits. Real offers are ~6 KB (captures); anything near these is
# abuse or a bug, and we would rather refuse than hand it to the SDP/ICE layers.
MAX_FRAME_CHARS = 1024 * 1024
MAX_SDP_LENGTH = 64 * 1024
MAX_NAME_LENGTH = 256

DEFAULT_APP_KEY = "defaultApp"
WEBRTC = "WebRTC"


class ProtocolError(Exception):
    """A client frame the server cannot act on.

    ``info`` is safe to send back to the client (``fail``/FAILED status).
    ``media_session_id`` is set when the frame still carried a usable id, so the
    session can answer with a FAILED notifyStreamStatusEvent for that stream
    (otherwise a PENDING stream would spin in the SDK's stop() retry loop).
    """

    def __init__(
        self,
        info: str,
        message_name: str | None = None,
        media_session_id: str | None = None,
    ) -> None:
        super().__init__(info)
        self.info = info
        self.message_name = message_name
        self.media_session_id = media_session_id

    def __repr__(self) -> str:
        return (
            f"ProtocolError({self.info!r}, message_name={self.message_name!r}, "
            f"media_session_id={self.media_session_id!r})"
        )


# --------------------------------------------------------------------------- incoming


@dataclass(frozen=True, slots=True)
class Connection:
    app_key: str
    auth_token: str | None
    keep_alive: bool
    media_providers: tuple[str, ...]
    custom: dict[str, Any] | None = field(compare=False)
    # The client's object as sent; getUserData echoes it back (spec §1.2).
    raw: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class _MediaRequest:
    media_session_id: str
    name: str
    sdp: str = field(repr=False)
    media_provider: str
    has_audio: bool
    has_video: bool
    record: bool
    # Everything else (constraints, transport, custom, width/height, ...) lives here.
    raw: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PublishStream(_MediaRequest):
    pass


@dataclass(frozen=True, slots=True)
class PlayStream(_MediaRequest):
    pass


@dataclass(frozen=True, slots=True)
class UnPublishStream:
    media_session_id: str
    name: str | None
    raw: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StopStream:
    media_session_id: str
    name: str | None
    raw: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AvailableStream:
    # The reply is routed by this value, sent back as ``id`` (spec §8).
    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class SendData:
    operation_id: str
    payload: object = field(compare=False)


@dataclass(frozen=True, slots=True)
class SendStreamEvent:
    media_session_id: str
    type: str
    # None for mute/unmute events: the SDK sends no payload for those.
    payload: object = field(compare=False)


@dataclass(frozen=True, slots=True)
class Snapshot:
    media_session_id: str
    name: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A known client message with no core behaviour (logs, metrics, SIP, ...).

    ``raw`` is data[0] when it was an object, so the session layer can still act
    on e.g. ``connectMediaTransport {authToken}`` (spec §11) if it wants to.
    """

    name: str
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)


Message = Union[
    Connection,
    PublishStream,
    PlayStream,
    UnPublishStream,
    StopStream,
    AvailableStream,
    Ping,
    Pong,
    SendData,
    SendStreamEvent,
    Snapshot,
    Ignored,
]

IGNORED_MESSAGES: frozenset[str] = frozenset(
    {
        "pushLogs",
        "sessionDebug",
        "submitBugReport",
        "webRTCMetricsClientDescription",
        "webRTCMetricsBatch",
        "connectMediaTransport",
        # SIP call control: this server has no SIP side.
        "call",
        "answer",
        "hangup",
        "hold",
        "unhold",
        "sendDtmf",
        "transfer",
    }
)


# ---- field readers: each takes a non-None JSON value and returns the Python value,
# ---- or raises _Bad with the tail of the error text ("must be ...").


class _Bad(Exception):
    pass


def validate_name(value: Any) -> str:
    """A stream name that comes from elsewhere than a client's message (a backend's overwrite), checked as one."""
    try:
        return _identifier(value)
    except _Bad as exc:
        raise ProtocolError(f"Bad stream name: {exc}", "name") from None


def _non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad("must be a non-empty string")
    return value


def _identifier(value: Any) -> str:
    """Stream names and ids: echoed to other clients, logs, hooks and file names."""
    text = _non_empty_str(value)
    if len(text) > MAX_NAME_LENGTH:
        raise _Bad(f"must be at most {MAX_NAME_LENGTH} characters")
    # Cc = C0/C1 controls; Cs = lone surrogates, which cannot be UTF-8 encoded.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        raise _Bad("must not contain control characters")
    return text


def _sdp(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad("must be a string")
    if len(value) > MAX_SDP_LENGTH:
        raise _Bad(f"must be at most {MAX_SDP_LENGTH} characters")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("must be a boolean")
    return value


def _opt_token(value: Any) -> str | None:
    if not isinstance(value, str):
        raise _Bad("must be a string")
    # "" carries no session to resume; treat it like an absent token.
    return value or None


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad("must be a list of strings")
    return tuple(value)


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad("must be an object")
    return value


def _anything(value: Any) -> Any:
    return value


_REQUIRED: Any = object()


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # JSON key in data[0]
    attr: str  # dataclass attribute
    read: Callable[[Any], Any]
    # Used when the key is absent or null (the SDK omits unset fields, spec §1.1).
    default: Any = _REQUIRED


_MSID = "mediaSessionId"

_NAME = _Field("name", "name", _identifier)
_OPT_NAME = _Field("name", "name", _identifier, None)
_MEDIA_FIELDS = (
    _NAME,
    # Required for WebRTC only; checked after reading, once mediaProvider is known.
    _Field("sdp", "sdp", _sdp, ""),
    _Field("mediaProvider", "media_provider", _non_empty_str, WEBRTC),
    _Field("hasAudio", "has_audio", _bool, True),
    _Field("hasVideo", "has_video", _bool, True),
    _Field("record", "record", _bool, False),
)


@dataclass(frozen=True, slots=True)
class _Spec:
    cls: type
    fields: tuple[_Field, ...] = ()
    has_msid: bool = False  # reads data[0].mediaSessionId into media_session_id
    has_raw: bool = False  # passes data[0] itself as ``raw``


_SPECS: dict[str, _Spec] = {
    "connection": _Spec(
        Connection,
        (
            _Field("appKey", "app_key", _identifier, DEFAULT_APP_KEY),
            _Field("authToken", "auth_token", _opt_token, None),
            _Field("keepAlive", "keep_alive", _bool, False),
            # Empty when absent: "the client did not say", not "WebRTC only".
            _Field("mediaProviders", "media_providers", _str_tuple, ()),
            _Field("custom", "custom", _object, None),
        ),
        has_raw=True,
    ),
    "publishStream": _Spec(PublishStream, _MEDIA_FIELDS, has_msid=True, has_raw=True),
    "playStream": _Spec(PlayStream, _MEDIA_FIELDS, has_msid=True, has_raw=True),
    "unPublishStream": _Spec(UnPublishStream, (_OPT_NAME,), has_msid=True, has_raw=True),
    "stopStream": _Spec(StopStream, (_OPT_NAME,), has_msid=True, has_raw=True),
    "availableStream": _Spec(AvailableStream, (_NAME,), has_msid=True),
    "sendData": _Spec(
        SendData,
        (
            # Required: the DataStatusEvent reply is matched by it.
            _Field("operationId", "operation_id", _identifier),
            _Field("payload", "payload", _anything, None),
        ),
    ),
    "sendStreamEvent": _Spec(
        SendStreamEvent,
        (
            _Field("type", "type", _identifier),
            _Field("payload", "payload", _anything, None),
        ),
        has_msid=True,
    ),
    "snapshot": _Spec(Snapshot, (_NAME,), has_msid=True),
}


def _read_msid(name: str, obj: dict[str, Any]) -> str:
    value = obj.get(_MSID)
    if value is None or value == "":
        raise ProtocolError(Info.MEDIASESSION_ID_NULL, name)
    try:
        return _identifier(value)
    except _Bad as exc:
        raise ProtocolError(f"{name}: field '{_MSID}' {exc}", name) from None


def _decode(text: str | bytes) -> Any:
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("Message is not valid UTF-8") from None
    if len(text) > MAX_FRAME_CHARS:
        raise ProtocolError(f"Message is larger than {MAX_FRAME_CHARS} characters")
    try:
        # NaN/Infinity are not JSON; refuse them so nothing we echo back (e.g.
        # getUserData) can make the browser's JSON.parse throw.
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ProtocolError("Message is not valid JSON") from None


def _reject_constant(token: str) -> Any:
    raise ValueError(token)


def parse_message(text: str | bytes) -> Message:
    """Parse one client frame; raise ``ProtocolError`` if it cannot be acted on."""
    envelope = _decode(text)
    if not isinstance(envelope, dict):
        raise ProtocolError("Message must be a JSON object")
    name = envelope.get("message")
    if not isinstance(name, str) or not name:
        raise ProtocolError("Field 'message' must be a non-empty string")

    data = envelope.get("data")
    if name in ("ping", "pong"):
        # The SDK sends [null]; media sockets and other clients may send [] or no data.
        if data is not None and not isinstance(data, list):
            raise ProtocolError(f"{name}: 'data' must be a list", name)
        return Ping() if name == "ping" else Pong()

    spec = _SPECS.get(name)
    if spec is None and name not in IGNORED_MESSAGES:
        raise ProtocolError(f"Unknown message: {name}", name)
    if not isinstance(data, list) or not data:
        raise ProtocolError(f"{name}: 'data' must be a non-empty list", name)
    obj = data[0]
    if not isinstance(obj, dict):
        raise ProtocolError(f"{name}: data[0] must be an object", name)
    if spec is None:
        return Ignored(name, obj)

    kwargs: dict[str, Any] = {}
    msid: str | None = None
    if spec.has_msid:
        msid = kwargs["media_session_id"] = _read_msid(name, obj)
    for f in spec.fields:
        value = obj.get(f.key)
        if value is None and f.default is not _REQUIRED:
            kwargs[f.attr] = f.default
            continue
        try:
            # A missing required field reaches the reader as None and fails there,
            # so the error says what was expected rather than just "missing".
            kwargs[f.attr] = f.read(value)
        except _Bad as exc:
            raise ProtocolError(f"{name}: field '{f.key}' {exc}", name, msid) from None
    if spec.has_raw:
        kwargs["raw"] = obj
    if spec.cls in (PublishStream, PlayStream):
        # MSE/WSPlayer offers are fixed and unused (spec §11); only WebRTC needs one.
        if kwargs["media_provider"] == WEBRTC and not kwargs["sdp"]:
            raise ProtocolError(
                f"{name}: field 'sdp' must be a non-empty string for mediaProvider WebRTC",
                name,
                msid,
            )
    return spec.cls(**kwargs)


# --------------------------------------------------------------------------- outgoing


def encode(name: str, *data: Any) -> str:
    """One server frame. ``data`` is always a list: the SDK reads ``data.data[0]``.

    ensure_ascii stays on: we echo client strings, and a lone surrogate from a
    client's "\\ud800" escape would otherwise fail to encode as a UTF-8 frame.
    """
    return json.dumps({"message": name, "data": list(data)}, separators=(",", ":"))


def get_user_data(connection: Connection, session_id: str) -> str:
    """The reply to ``connection`` that makes the SDK session ESTABLISHED (spec §1.2)."""
    obj = dict(connection.raw)
    # Its presence would start the SDK's metrics collector (spec §1.2).
    obj.pop("webRTCMetricsServerDescription", None)
    obj.update(
        useWsTunnel=False,
        useWsTunnelPacketization2=False,
        useBase64BinaryEncoding=False,
        authToken=session_id,
        sessionId=session_id,
        status="ESTABLISHED",
        forceLogger=False,
    )
    return encode("getUserData", obj)


def get_version(version: str) -> str:
    return encode("getVersion", version)


def ping() -> str:
    return encode("ping")


def pong() -> str:
    return encode("pong")


def set_remote_sdp(media_session_id: str, sdp: str) -> str:
    # data[2] is ignored by the SDK; WCS sends true.
    return encode("setRemoteSDP", media_session_id, sdp, True)


def stream_status(
    *,
    media_session_id: str,
    name: str,
    published: bool,
    status: str,
    info: str | None = None,
    has_audio: bool = True,
    has_video: bool = True,
    record: bool = False,
    audio_codec: str | None = None,
    video_codec: str | None = None,
    width: int = 0,
    height: int = 0,
    create_date: int = 0,
    media_provider: str = WEBRTC,
    extra: dict[str, Any] | None = None,
) -> str:
    """notifyStreamStatusEvent in the WCS shape (spec §3.4).

    ``extra`` is merged last, e.g. ``{"recordName": ...}`` on the final status
    of a recorded stream (spec §14).
    """
    obj: dict[str, Any] = {
        "mediaSessionId": media_session_id,
        "name": name,
        "published": published,
        "hasVideo": has_video,
        "hasAudio": has_audio,
        "status": str(status),
        "audioCodec": audio_codec,
        "videoCodec": video_codec,
        "record": record,
        "width": width,
        "height": height,
        "bitrate": 0,
        "minBitrate": 0,
        "maxBitrate": 0,
        "quality": 0,
        "createDate": create_date,
        "streamInfo": {
            "nodeId": None,
            "appKey": None,
            "sessionId": None,
            "mediaSessionId": media_session_id,
            "name": name,
            "samplingTime": None,
            "recordTimestamp": None,
            "recordStarted": False,
        },
        "mediaProvider": media_provider,
    }
    if info is not None:
        obj["info"] = info
    if extra:
        obj.update(extra)
    return encode("notifyStreamStatusEvent", obj)


def notify_audio_codec(media_session_id: str, codec_name: str) -> str:
    return encode("notifyAudioCodec", media_session_id, {"name": codec_name})


def notify_video_format(media_session_id: str, width: int, height: int) -> str:
    # Goes through the SDK's status handler; RESIZE does not change status().
    return encode(
        "notifyVideoFormat",
        {
            "streamerVideoWidth": width,
            "streamerVideoHeight": height,
            "mediaSessionId": media_session_id,
            "status": "RESIZE",
        },
    )


def available_stream(request_id: str, available: bool, info: str = "") -> str:
    # The SDK tests `status == "true"`; a JSON boolean would reject its promise.
    return encode(
        "availableStream",
        {"status": "true" if available else "false", "info": info, "id": request_id},
    )


def notify_stream_event(media_session_id: str, type: str, payload: object = None) -> str:
    obj: dict[str, Any] = {"mediaSessionId": media_session_id, "type": type}
    # Omitted like the SDK omits it for mute events, rather than sent as null.
    if payload is not None:
        obj["payload"] = payload
    return encode("notifyStreamEvent", obj)


def data_status(operation_id: str, status: str, info: str | None = None) -> str:
    # Anything but these two makes the SDK throw inside its handler.
    if status not in ("ACCEPTED", "FAILED"):
        raise ValueError(f"DataStatusEvent status must be ACCEPTED or FAILED, not {status!r}")
    obj: dict[str, Any] = {"operationId": operation_id, "status": status}
    if info is not None:
        obj["info"] = info
    return encode("DataStatusEvent", obj)


def on_data_event(session_id: str, operation_id: str, payload: object, app_key: str = DEFAULT_APP_KEY) -> str:
    """Data pushed to a client (spec §9, REST /data/send): the SDK fires SESSION_STATUS.APP_DATA with it."""
    return encode(
        "OnDataEvent",
        {"appKey": app_key, "sessionId": session_id, "operationId": operation_id, "payload": payload},
    )


def fail(
    info: str,
    media_session_id: str | None = None,
    api_method: str = "StreamStatusEvent",
) -> str:
    """Generic error (spec §8): the SDK fires SESSION_STATUS.WARN with it and, for
    apiMethod StreamStatusEvent, also routes it to stream ``id`` as a FAILED status."""
    obj: dict[str, Any] = {"apiMethod": api_method}
    if media_session_id is not None:
        obj["id"] = media_session_id
    obj.update(status="FAILED", info=info)
    return encode("fail", obj)


def video_rate(
    message_name: Literal["inboundVideoRate", "outboundVideoRate"],
    media_session_id: str,
    video_rate: int,
    fps: int | float,
    nack: int,
    pli: int,
    lost_packets: int,
    width: int,
    height: int,
) -> str:
    """inboundVideoRate (publisher) / outboundVideoRate (player), spec §7."""
    if message_name not in ("inboundVideoRate", "outboundVideoRate"):
        raise ValueError(f"not a video rate message: {message_name!r}")
    return encode(
        message_name,
        {
            "mediaSessionId": media_session_id,
            "videoRate": video_rate,
            "fps": fps,
            "nack": nack,
            "pli": pli,
            "lostPackets": lost_packets,
            "width": width,
            "height": height,
        },
    )
