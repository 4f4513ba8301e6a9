"""REST hooks (spec §13), sans-I/O: what to send to the backend, and what its answer decides.

No sockets, no asyncio, and no import of webcall.streams or webcall.wcs: everything here takes
and returns plain dicts, so the WCS session layer (and the fuzz tests) can call it directly.

Terms, as WCS names them:

* an **invocation** can be denied (connect, publishStream, playStream, OnDataEvent, unPublishStream,
  stopStream, snapshot, startRecording): 200 with a JSON object allows it, any other status denies it;
* an **event** cannot be denied (ConnectionStatusEvent, StreamStatusEvent, RecordingStatusEvent): it is only
  posted, and its answer is ignored;
* ``StreamKeepAliveEvent`` is an event whose 403 answer terminates the stream;
* ``restClientConfig`` (in the connect answer) sets, per method, restExclude, clientExclude, restOnError
  (LOG | FAIL), restPolicy (OVERWRITE | NOTIFY | DISABLE) and restOverwrite.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

# --- names ----------------------------------------------------------------------------------------------

CONNECT = "connect"
PUBLISH_STREAM = "publishStream"
PLAY_STREAM = "playStream"
ON_DATA_EVENT = "OnDataEvent"  # the hook for the client's sendData (spec §9)
UNPUBLISH_STREAM = "unPublishStream"
STOP_STREAM = "stopStream"
SNAPSHOT = "snapshot"  # the client's snapshot message (spec §10); not listed in §13: webcall's name
START_RECORDING = "startRecording"  # as the REST path /stream/startRecording (spec §12); webcall's name

CONNECTION_STATUS_EVENT = "ConnectionStatusEvent"
STREAM_STATUS_EVENT = "StreamStatusEvent"
RECORDING_STATUS_EVENT = "RecordingStatusEvent"  # a recording file finished; webcall's name (not in §13)
STREAM_KEEP_ALIVE_EVENT = "StreamKeepAliveEvent"

INVOCATIONS = frozenset({CONNECT, PUBLISH_STREAM, PLAY_STREAM, ON_DATA_EVENT, UNPUBLISH_STREAM, STOP_STREAM,
                         SNAPSHOT, START_RECORDING})
EVENTS = frozenset({CONNECTION_STATUS_EVENT, STREAM_STATUS_EVENT, RECORDING_STATUS_EVENT})

RESTRICTED_ACCESS = "Restricted access"  # WCS's info for a denied stream (STREAM_STATUS_INFO)
TERMINATED_BY_KEEP_ALIVE = "Terminated by keep-alive"
DEFAULT_APP_KEY = "defaultApp"

LOG, FAIL = "LOG", "FAIL"
OVERWRITE, NOTIFY, DISABLE = "OVERWRITE", "NOTIFY", "DISABLE"
ON_ERROR_VALUES = (LOG, FAIL)
POLICY_VALUES = (OVERWRITE, NOTIFY, DISABLE)

MAX_INFO_CHARS = 256  # a backend's deny message is shown to the client: keep it short and printable
MAX_ANSWER_BYTES = 1024 * 1024  # a larger answer is a bad answer


class HookAnswerError(ValueError):
    """The backend's answer (or its restClientConfig) is not what the protocol allows."""


# --- restClientConfig -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """restClientConfig for one method.

    ``on_error`` defaults to FAIL, not WCS's LOG: with WCS's default a dead or timing-out backend would let
    everyone in. A backend that wants WCS's fail-open behaviour sends ``restOnError: "LOG"``.
    """

    rest_exclude: frozenset[str] = frozenset()
    client_exclude: frozenset[str] = frozenset()
    on_error: str = FAIL
    policy: str = NOTIFY
    overwrite: frozenset[str] = frozenset()


DEFAULT_POLICY = MethodPolicy()


@dataclass(frozen=True, slots=True)
class RestClientConfig:
    methods: dict[str, MethodPolicy] = field(default_factory=dict)

    def policy(self, method: str) -> MethodPolicy:
        return self.methods.get(method, DEFAULT_POLICY)


DEFAULT_CONFIG = RestClientConfig()


def _field_list(value: Any, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # lenient: a JSON list of names
        return frozenset(v.strip() for v in value if v.strip())
    raise HookAnswerError(f"restClientConfig: {key} must be a comma-separated string")


def _choice(value: Any, key: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.upper() not in allowed:
        raise HookAnswerError(f"restClientConfig: {key} must be one of {', '.join(allowed)}")
    return value.upper()


def parse_method_policy(obj: Any) -> MethodPolicy:
    if not isinstance(obj, dict):
        raise HookAnswerError("restClientConfig: each method's settings must be an object")
    return MethodPolicy(
        rest_exclude=_field_list(obj.get("restExclude"), "restExclude"),
        client_exclude=_field_list(obj.get("clientExclude"), "clientExclude"),
        on_error=_choice(obj.get("restOnError"), "restOnError", ON_ERROR_VALUES, FAIL),
        policy=_choice(obj.get("restPolicy"), "restPolicy", POLICY_VALUES + ("DISABLED",), NOTIFY)
        .replace("DISABLED", DISABLE),  # old WCS docs spell it DISABLED
        overwrite=_field_list(obj.get("restOverwrite"), "restOverwrite"),
    )


def parse_rest_client_config(obj: Any) -> RestClientConfig:
    """restClientConfig from a connect answer (None or absent: the defaults). Raises HookAnswerError."""
    if obj is None:
        return DEFAULT_CONFIG
    if not isinstance(obj, dict):
        raise HookAnswerError("restClientConfig must be an object")
    return RestClientConfig({str(method): parse_method_policy(value) for method, value in obj.items()})


# --- requests ---------------------------------------------------------------------------------------------


def request_body(obj: dict[str, Any], *, node_id: str, app_key: str, session_id: str,
                 policy: MethodPolicy = DEFAULT_POLICY) -> dict[str, Any] | None:
    """The JSON body of a hook: the client's object plus nodeId, appKey, sessionId, less restExclude.

    None when the method's restPolicy is DISABLE: nothing is sent, and the action is allowed.
    """
    if policy.policy == DISABLE:
        return None
    body = {k: v for k, v in obj.items() if k not in policy.rest_exclude}
    for key, value in (("nodeId", node_id), ("appKey", app_key), ("sessionId", session_id)):
        if key not in policy.rest_exclude:
            body[key] = value
    return body


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes posted (and signed). Non-JSON values (NaN, objects) become null or their str()."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    """The Authorization header WCS sends with rest_hook_send_hash: ``WCS <HMAC-MD5 hex of the body>``."""
    return "WCS " + hmac.new(secret.encode("utf-8"), body, hashlib.md5).hexdigest()


def check_signature(header: str | None, body: bytes, secret: str) -> bool:
    """For backends (and tests): does an Authorization header sign this body?"""
    return header is not None and hmac.compare_digest(header, sign(body, secret))


# --- answers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What a hook decided. ``body`` is the backend's JSON object on a 200 (for restPolicy OVERWRITE)."""

    allowed: bool
    info: str | None = None  # for the client when denied: "Restricted access" or the backend's message
    status: int | None = None  # HTTP status; None when no answer came (no URL, DISABLE, error)
    body: dict[str, Any] | None = None
    error: str | None = None  # timeout, connection error, bad answer (logged; allowed only with LOG)
    requested: bool = True  # False when no request was made (no hook URL, or restPolicy DISABLE)


ALLOWED_WITHOUT_REQUEST = Decision(True, requested=False)


def parse_answer(raw: bytes) -> dict[str, Any]:
    """A 200 answer's body: must be one JSON object. Raises HookAnswerError."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise HookAnswerError("answer too large")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HookAnswerError("answer is not JSON") from None
    if not isinstance(value, dict):
        raise HookAnswerError("answer is not a JSON object")
    return value


def _reject_constant(token: str) -> Any:
    raise ValueError(token)  # NaN, Infinity: not JSON


def clean_info(text: Any) -> str | None:
    """A backend's message, fit for a client: a printable single line, at most MAX_INFO_CHARS."""
    if not isinstance(text, str):
        return None
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text)
    text = " ".join(text.split())[:MAX_INFO_CHARS]
    return text or None


def deny_info(raw: bytes) -> str:
    """The info of a denied action: the backend's JSON ``message`` (or ``info``), else "Restricted access"."""
    try:
        body = parse_answer(raw)
    except HookAnswerError:
        return RESTRICTED_ACCESS
    for key in ("message", "info"):
        info = clean_info(body.get(key))
        if info:
            return info
    return RESTRICTED_ACCESS


def decide(status: int, raw: bytes, policy: MethodPolicy = DEFAULT_POLICY) -> Decision:
    """Decide an invocation from the backend's HTTP answer."""
    if status != 200:
        # Any non-200 status denies, whatever restOnError says (WCS declines 4xx under LOG as well).
        return Decision(False, deny_info(raw), status=status)
    try:
        body = parse_answer(raw)
    except HookAnswerError as exc:
        return decide_error(f"bad answer: {exc}", policy, status=status)
    return Decision(True, status=status, body=body)


def decide_error(error: str, policy: MethodPolicy = DEFAULT_POLICY, status: int | None = None) -> Decision:
    """Decide an invocation that got no usable answer (timeout, connection refused, bad JSON)."""
    if policy.on_error == LOG:
        return Decision(True, status=status, error=error)
    return Decision(False, RESTRICTED_ACCESS, status=status, error=error)


def decide_connect(status: int, raw: bytes) -> tuple[Decision, RestClientConfig]:
    """The connect hook: its decision, and the restClientConfig for every later hook of this client."""
    decision = decide(status, raw)
    if not decision.allowed or decision.body is None:
        return decision, DEFAULT_CONFIG
    try:
        return decision, parse_rest_client_config(decision.body.get("restClientConfig"))
    except HookAnswerError as exc:
        return decide_error(f"bad answer: {exc}", status=status), DEFAULT_CONFIG


def apply_answer(obj: dict[str, Any], decision: Decision, policy: MethodPolicy) -> dict[str, Any]:
    """The client's object as the action should go on with it.

    With restPolicy OVERWRITE, each field named in restOverwrite that the backend's answer carries replaces
    the client's value (e.g. ``name``: the backend renames the stream). Otherwise the object is unchanged.
    The caller re-validates what it uses (a renamed stream is still checked like a client's name).
    """
    if policy.policy != OVERWRITE or decision.body is None or not decision.allowed:
        return obj
    changed = {k: decision.body[k] for k in policy.overwrite if k in decision.body}
    return {**obj, **changed} if changed else obj


def client_view(obj: dict[str, Any], policy: MethodPolicy) -> dict[str, Any]:
    """An object sent to the client, less the method's clientExclude fields."""
    if not policy.client_exclude:
        return obj
    return {k: v for k, v in obj.items() if k not in policy.client_exclude}


def keep_alive_decision(status: int | None) -> bool:
    """StreamKeepAliveEvent: True = keep the stream. Only a 403 terminates it (an error or timeout does not)."""
    return status != 403

