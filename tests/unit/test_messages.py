"""Protocol codec tests, driven by real Web SDK captures (tests/fixtures/captures).

The captures are required: if they cannot be found the tests FAIL (never skip),
because without them we would be testing the codec only against itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from webcall.wcs.messages import (
    IGNORED_MESSAGES,
    MAX_FRAME_CHARS,
    MAX_NAME_LENGTH,
    MAX_SDP_LENGTH,
    AvailableStream,
    Connection,
    Ignored,
    Ping,
    PlayStream,
    Pong,
    ProtocolError,
    PublishStream,
    SendData,
    SendStreamEvent,
    Snapshot,
    StopStream,
    UnPublishStream,
    available_stream,
    data_status,
    encode,
    fail,
    get_user_data,
    get_version,
    notify_audio_codec,
    notify_stream_event,
    notify_video_format,
    parse_message,
    ping,
    pong,
    set_remote_sdp,
    stream_status,
    video_rate,
)
from webcall.wcs.status import TERMINAL, Info, StreamStatus

# --------------------------------------------------------------------------- fixtures

_REPO = Path(__file__).resolve().parents[2]


def _capture_dir() -> Path:
    # The captures ship with the repo; WEBCALL_CAPTURES points the tests at another set.
    override = os.environ.get("WEBCALL_CAPTURES")
    return Path(override) if override else _REPO / "tests" / "fixtures" / "captures"


CAPTURE_DIR = _capture_dir()
# The protocol reference the code follows; its STREAM_STATUS_INFO table is the source of the info strings.
SPEC_FILE = _REPO / "docs" / "protocol.md"
_MISSING = "<captures missing>"
# A sentinel instead of an empty list: an empty parameter set would be reported as
# a skip, and a missing capture directory must be a failure.
CAPTURE_FILES: list[Any] = sorted(CAPTURE_DIR.glob("*.json")) or [_MISSING]


def _load(path: Any) -> dict[str, Any]:
    if path is _MISSING:
        pytest.fail(
            f"capture files not found in {CAPTURE_DIR} "
            "(expected <repo>/tests/fixtures/captures, or set WEBCALL_CAPTURES)"
        )
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _frames(capture: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    return [m for m in capture["messages"] if m["dir"] == direction]


def _text(frame: dict[str, Any]) -> str:
    # Captures store each frame decoded; re-serialise it as the wire text.
    return json.dumps({"message": frame["message"], "data": frame["data"]})


def _decoded(text: str) -> dict[str, Any]:
    out = json.loads(text)
    assert set(out) == {"message", "data"}
    assert isinstance(out["data"], list)
    return out


def _frame(message: str, obj: Any) -> str:
    return json.dumps({"message": message, "data": [obj]})


def test_captures_present() -> None:
    assert CAPTURE_DIR.is_dir(), f"missing capture directory {CAPTURE_DIR}"
    names = [p.name for p in CAPTURE_FILES if p is not _MISSING]
    assert any(n.startswith("chromium-") for n in names)
    assert any(n.startswith("firefox-") for n in names)


# --------------------------------------------------------------------------- status


def _spec_info_table() -> dict[str, str]:
    assert SPEC_FILE.is_file(), f"missing {SPEC_FILE}"
    text = SPEC_FILE.read_text(encoding="utf-8")
    # The table runs from its heading to the next heading of any level.
    section = re.split(r"^#", text.split("### STREAM_STATUS_INFO", 1)[1], maxsplit=1, flags=re.M)[0]
    table = dict(re.findall(r"^\| ([A-Z_]+) \| `([^`]+)` \|$", section, re.M))
    assert len(table) > 30, "failed to read the STREAM_STATUS_INFO table"
    return table


def test_info_has_every_spec_text_verbatim() -> None:
    table = _spec_info_table()
    ours = {k: v for k, v in vars(Info).items() if k.isupper()}
    assert ours == table


def test_stream_status_values() -> None:
    expected = {"PENDING", "PUBLISHING", "PLAYING", "UNPUBLISHED", "STOPPED", "FAILED", "RESIZE"}
    assert {s.value for s in StreamStatus} == expected
    assert all(s.name == s.value for s in StreamStatus)
    assert f"{StreamStatus.PLAYING}" == "PLAYING"
    assert StreamStatus.FAILED == "FAILED"
    assert TERMINAL == {StreamStatus.UNPUBLISHED, StreamStatus.STOPPED, StreamStatus.FAILED}


# --------------------------------------------------------------------------- parsing captures

EXPECTED_TYPES: dict[str, type] = {
    "connection": Connection,
    "publishStream": PublishStream,
    "playStream": PlayStream,
    "unPublishStream": UnPublishStream,
    "stopStream": StopStream,
    "availableStream": AvailableStream,
    "ping": Ping,
    "pong": Pong,
    "sendData": SendData,
    "sendStreamEvent": SendStreamEvent,
    "snapshot": Snapshot,
    **{name: Ignored for name in IGNORED_MESSAGES},
}


def _check_fields(msg: Any, obj: Any) -> None:
    """The parsed values must be the client's values (or the documented defaults)."""
    if isinstance(msg, Connection):
        assert msg.raw == obj
        assert msg.app_key == obj.get("appKey", "defaultApp")
        assert msg.auth_token == (obj.get("authToken") or None)
        assert msg.keep_alive is obj.get("keepAlive", False)
        assert msg.media_providers == tuple(obj["mediaProviders"])
        assert msg.custom == obj.get("custom")
    elif isinstance(msg, (PublishStream, PlayStream)):
        assert msg.raw == obj
        assert msg.media_session_id == obj["mediaSessionId"]
        assert msg.name == obj["name"]
        assert msg.sdp == obj["sdp"] and msg.sdp.startswith("v=0")
        assert msg.media_provider == obj["mediaProvider"] == "WebRTC"
        assert (msg.has_audio, msg.has_video, msg.record) == (
            obj["hasAudio"],
            obj["hasVideo"],
            obj["record"],
        )
    elif isinstance(msg, (UnPublishStream, StopStream)):
        assert msg.raw == obj
        assert (msg.media_session_id, msg.name) == (obj["mediaSessionId"], obj["name"])
    elif isinstance(msg, (AvailableStream, Snapshot)):
        assert (msg.media_session_id, msg.name) == (obj["mediaSessionId"], obj["name"])
    elif isinstance(msg, SendData):
        assert (msg.operation_id, msg.payload) == (obj["operationId"], obj["payload"])
    elif isinstance(msg, SendStreamEvent):
        assert (msg.media_session_id, msg.type) == (obj["mediaSessionId"], obj["type"])
        assert msg.payload == obj.get("payload")
    elif isinstance(msg, Ignored):
        assert msg.raw == obj
    else:
        assert isinstance(msg, (Ping, Pong))


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda p: getattr(p, "name", str(p)))
def test_every_client_frame_parses(path: Any) -> None:
    capture = _load(path)
    frames = _frames(capture, "c2s")
    assert frames, f"{path} has no client frames"
    for frame in frames:
        name = frame["message"]
        assert name in EXPECTED_TYPES, f"{path.name}: unexpected client message {name!r}"
        text = _text(frame)
        msg = parse_message(text)
        assert type(msg) is EXPECTED_TYPES[name], f"{path.name}: {name} -> {msg!r}"
        _check_fields(msg, frame["data"][0] if frame["data"] else None)
        # The WS layer may hand over bytes; same result.
        assert parse_message(text.encode("utf-8")) == msg


def test_captures_cover_the_core_client_messages() -> None:
    seen = {f["message"] for p in CAPTURE_FILES for f in _frames(_load(p), "c2s")}
    core = {
        "connection",
        "publishStream",
        "playStream",
        "unPublishStream",
        "stopStream",
        "availableStream",
        "ping",
        "pong",
        "sendData",
        "sendStreamEvent",
    }
    assert core <= seen


# --------------------------------------------------------------------------- builders vs captures


def _rebuild(name: str, data: list[Any], connections: dict[int, Connection], conn: int) -> str:
    """Rebuild a captured server frame with our builders, from its own values."""
    obj = data[0] if data else None
    if name == "getUserData":
        return get_user_data(connections[conn], obj["authToken"])
    if name == "getVersion":
        return get_version(data[0])
    if name == "ping":
        return ping()
    if name == "setRemoteSDP":
        return set_remote_sdp(data[0], data[1])
    if name == "notifyAudioCodec":
        return notify_audio_codec(data[0], data[1]["name"])
    if name == "notifyVideoFormat":
        return notify_video_format(
            obj["mediaSessionId"], obj["streamerVideoWidth"], obj["streamerVideoHeight"]
        )
    if name == "availableStream":
        return available_stream(obj["id"], obj["status"] == "true", obj["info"])
    if name == "DataStatusEvent":
        return data_status(obj["operationId"], obj["status"], obj.get("info"))
    if name == "notifyStreamEvent":
        return notify_stream_event(obj["mediaSessionId"], obj["type"], obj.get("payload"))
    if name == "notifyStreamStatusEvent":
        return stream_status(
            media_session_id=obj["mediaSessionId"],
            name=obj["name"],
            published=obj["published"],
            status=obj["status"],
            info=obj.get("info"),
            has_audio=obj["hasAudio"],
            has_video=obj["hasVideo"],
            record=obj["record"],
            audio_codec=obj["audioCodec"],
            video_codec=obj["videoCodec"],
            width=obj["width"],
            height=obj["height"],
            create_date=obj["createDate"],
            media_provider=obj["mediaProvider"],
        )
    pytest.fail(f"no builder for captured server message {name!r}")


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda p: getattr(p, "name", str(p)))
def test_builders_reproduce_captured_server_frames(path: Any) -> None:
    capture = _load(path)
    connections: dict[int, Connection] = {}
    for frame in capture["messages"]:
        if frame["dir"] == "c2s" and frame["message"] == "connection":
            msg = parse_message(_text(frame))
            assert isinstance(msg, Connection)
            connections[frame["conn"]] = msg
        if frame["dir"] != "s2c":
            continue
        built = _decoded(_rebuild(frame["message"], frame["data"], connections, frame["conn"]))
        assert built["message"] == frame["message"]
        if frame["message"] == "notifyStreamStatusEvent":
            ours, theirs = built["data"][0], frame["data"][0]
            # The capture server left out streamInfo, which spec §3.4 (and WCS) has.
            assert set(ours) - set(theirs) == {"streamInfo"}
            assert {k: ours[k] for k in theirs} == theirs
            assert ours["streamInfo"]["mediaSessionId"] == theirs["mediaSessionId"]
            assert ours["streamInfo"]["name"] == theirs["name"]
        else:
            assert built["data"] == frame["data"], f"{path.name}: {frame['message']}"


def test_captures_cover_the_core_server_messages() -> None:
    seen = {f["message"] for p in CAPTURE_FILES for f in _frames(_load(p), "s2c")}
    assert {
        "getUserData",
        "setRemoteSDP",
        "notifyStreamStatusEvent",
        "availableStream",
        "DataStatusEvent",
        "notifyStreamEvent",
    } <= seen


# --------------------------------------------------------------------------- leniency

MSID = "90e14ad0-fdb2-11e8-bce2-a3f72476fb49"


def test_minimal_publish_uses_defaults() -> None:
    msg = parse_message(_frame("publishStream", {"mediaSessionId": MSID, "name": "s", "sdp": "v=0"}))
    assert msg == PublishStream(MSID, "s", "v=0", "WebRTC", True, True, False, raw={})


def test_null_optional_fields_use_defaults() -> None:
    obj = {"mediaSessionId": MSID, "name": "s", "sdp": "v=0", "hasAudio": None, "record": None,
           "mediaProvider": None, "transport": None, "cvoExtension": None}
    msg = parse_message(_frame("playStream", obj))
    assert isinstance(msg, PlayStream)
    assert (msg.media_provider, msg.has_audio, msg.record) == ("WebRTC", True, False)


@pytest.mark.parametrize("provider", ["MSE", "WSPlayer"])
def test_non_webrtc_play_needs_no_sdp(provider: str) -> None:
    msg = parse_message(_frame("playStream", {"mediaSessionId": MSID, "name": "s",
                                              "mediaProvider": provider}))
    assert isinstance(msg, PlayStream)
    assert (msg.sdp, msg.media_provider) == ("", provider)


def test_empty_connection_uses_defaults() -> None:
    msg = parse_message(_frame("connection", {}))
    assert msg == Connection("defaultApp", None, False, (), None, raw={})


def test_connection_reads_session_options() -> None:
    obj = {"appKey": "testApp", "keepAlive": True, "authToken": "/1.2.3.4:5/6.7.8.9:8443",
           "mediaProviders": ["WebRTC", "MSE"], "custom": {"user": "bob"}, "sipPort": 5060}
    msg = parse_message(_frame("connection", obj))
    assert isinstance(msg, Connection)
    assert (msg.app_key, msg.keep_alive, msg.auth_token) == ("testApp", True, obj["authToken"])
    assert (msg.media_providers, msg.custom, msg.raw) == (("WebRTC", "MSE"), {"user": "bob"}, obj)
    assert parse_message(_frame("connection", {"authToken": ""})).auth_token is None


@pytest.mark.parametrize(
    "text",
    [
        '{"message":"%s","data":[null]}',
        '{"message":"%s","data":[]}',
        '{"message":"%s"}',
        '{"message":"%s","data":null}',
    ],
)
@pytest.mark.parametrize("name,cls", [("ping", Ping), ("pong", Pong)])
def test_ping_pong_data_forms(text: str, name: str, cls: type) -> None:
    assert parse_message(text % name) == cls()


def test_stop_messages_without_name() -> None:
    assert parse_message(_frame("unPublishStream", {"mediaSessionId": MSID})) == UnPublishStream(
        MSID, None, raw={}
    )
    assert parse_message(_frame("stopStream", {"mediaSessionId": MSID, "name": None})) == StopStream(
        MSID, None, raw={}
    )


def test_stream_event_without_payload() -> None:
    msg = parse_message(_frame("sendStreamEvent", {"mediaSessionId": MSID, "type": "audioMuted"}))
    assert msg == SendStreamEvent(MSID, "audioMuted", None)


def test_send_data_and_snapshot() -> None:
    msg = parse_message(_frame("sendData", {"operationId": "op1", "payload": [1, {"a": 2}]}))
    assert isinstance(msg, SendData) and msg.payload == [1, {"a": 2}]
    assert parse_message(_frame("snapshot", {"mediaSessionId": MSID, "name": "s"})) == Snapshot(
        MSID, "s"
    )


@pytest.mark.parametrize("name", sorted(IGNORED_MESSAGES))
def test_ignored_messages(name: str) -> None:
    obj = {"authToken": "/1.2.3.4:5/6.7.8.9:8443"} if name == "connectMediaTransport" else {"x": 1}
    msg = parse_message(_frame(name, obj))
    assert msg == Ignored(name)
    assert isinstance(msg, Ignored) and msg.raw == obj


def test_boundary_sizes_are_accepted() -> None:
    name = "n" * MAX_NAME_LENGTH
    msg = parse_message(_frame("publishStream", {"mediaSessionId": MSID, "name": name,
                                                 "sdp": "v" * MAX_SDP_LENGTH}))
    assert isinstance(msg, PublishStream) and msg.name == name


def test_unicode_names_and_extra_fields_are_fine() -> None:
    msg = parse_message(_frame("availableStream", {"mediaSessionId": MSID, "name": "тест 1",
                                                   "future": {"x": 1}}))
    assert msg == AvailableStream(MSID, "тест 1")


# --------------------------------------------------------------------------- malformed input


_DROP = object()  # marks a field to leave out of the frame


def _pub(**fields: Any) -> str:
    obj: dict[str, Any] = {"mediaSessionId": MSID, "name": "s", "sdp": "v=0"}
    obj.update(fields)
    return _frame("publishStream", {k: v for k, v in obj.items() if v is not _DROP})


# (text, substring of info, message_name, media_session_id)
MALFORMED: list[tuple[str | bytes, str, str | None, str | None]] = [
    ("not json", "not valid JSON", None, None),
    ("", "not valid JSON", None, None),
    (b"\xff\xfe{}", "not valid UTF-8", None, None),
    ('{"message":"connection","data":[{"x":NaN}]}', "not valid JSON", None, None),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON", None, None),
    ("[1,2]", "must be a JSON object", None, None),
    ('"connection"', "must be a JSON object", None, None),
    ("null", "must be a JSON object", None, None),
    ('{"data":[{}]}', "'message' must be a non-empty string", None, None),
    ('{"message":5,"data":[{}]}', "'message' must be a non-empty string", None, None),
    ('{"message":"","data":[{}]}', "'message' must be a non-empty string", None, None),
    ('{"message":"getStreamStatistics","data":[{}]}', "Unknown message: getStreamStatistics",
     "getStreamStatistics", None),
    ('{"message":"connection"}', "connection: 'data' must be a non-empty list", "connection", None),
    ('{"message":"connection","data":[]}', "'data' must be a non-empty list", "connection", None),
    ('{"message":"connection","data":{}}', "'data' must be a non-empty list", "connection", None),
    ('{"message":"connection","data":[null]}', "connection: data[0] must be an object",
     "connection", None),
    ('{"message":"publishStream","data":["x"]}', "data[0] must be an object", "publishStream", None),
    ('{"message":"pushLogs","data":[]}', "'data' must be a non-empty list", "pushLogs", None),
    ('{"message":"ping","data":"x"}', "ping: 'data' must be a list", "ping", None),
    (_frame("connection", {"keepAlive": "yes"}), "connection: field 'keepAlive' must be a boolean",
     "connection", None),
    (_frame("connection", {"mediaProviders": "WebRTC"}), "field 'mediaProviders' must be a list",
     "connection", None),
    (_frame("connection", {"mediaProviders": ["WebRTC", 1]}), "must be a list of strings",
     "connection", None),
    (_frame("connection", {"custom": []}), "field 'custom' must be an object", "connection", None),
    (_frame("connection", {"appKey": 5}), "field 'appKey' must be a non-empty string",
     "connection", None),
    (_frame("connection", {"authToken": 5}), "field 'authToken' must be a string",
     "connection", None),
    # mediaSessionId missing/null on every stream message
    (_pub(mediaSessionId=_DROP), Info.MEDIASESSION_ID_NULL, "publishStream", None),
    (_pub(mediaSessionId=None), Info.MEDIASESSION_ID_NULL, "publishStream", None),
    (_pub(mediaSessionId=""), Info.MEDIASESSION_ID_NULL, "publishStream", None),
    (_frame("playStream", {"name": "s", "sdp": "v=0"}), Info.MEDIASESSION_ID_NULL,
     "playStream", None),
    (_frame("unPublishStream", {"name": "s"}), Info.MEDIASESSION_ID_NULL, "unPublishStream", None),
    (_frame("stopStream", {"mediaSessionId": None}), Info.MEDIASESSION_ID_NULL, "stopStream", None),
    (_frame("availableStream", {"name": "s"}), Info.MEDIASESSION_ID_NULL, "availableStream", None),
    (_frame("sendStreamEvent", {"type": "data"}), Info.MEDIASESSION_ID_NULL,
     "sendStreamEvent", None),
    (_frame("snapshot", {"name": "s"}), Info.MEDIASESSION_ID_NULL, "snapshot", None),
    (_pub(mediaSessionId=5), "field 'mediaSessionId' must be a non-empty string",
     "publishStream", None),
    (_pub(mediaSessionId="a\x00b"), "field 'mediaSessionId' must not contain control",
     "publishStream", None),
    (_pub(mediaSessionId="m" * 300), "field 'mediaSessionId' must be at most 256",
     "publishStream", None),
    # bad fields on a message whose mediaSessionId is usable
    (_pub(name=_DROP), "publishStream: field 'name' must be a non-empty string",
     "publishStream", MSID),
    (_pub(name=None), "publishStream: field 'name' must be a non-empty string",
     "publishStream", MSID),
    (_pub(name=""), "field 'name' must be a non-empty string", "publishStream", MSID),
    (_pub(name=5), "field 'name' must be a non-empty string", "publishStream", MSID),
    (_pub(name="n" * (MAX_NAME_LENGTH + 1)), "field 'name' must be at most 256 characters",
     "publishStream", MSID),
    (_pub(name="a\nb"), "field 'name' must not contain control characters", "publishStream", MSID),
    (_pub(name="a\u0085b"), "must not contain control characters", "publishStream", MSID),
    (_pub(name="a\x7f"), "must not contain control characters", "publishStream", MSID),
    ('{"message":"publishStream","data":[{"mediaSessionId":"%s","name":"a\\ud800","sdp":"v=0"}]}'
     % MSID, "must not contain control characters", "publishStream", MSID),
    (_pub(sdp=_DROP), "publishStream: field 'sdp' must be a non-empty string for mediaProvider "
     "WebRTC", "publishStream", MSID),
    (_pub(sdp=""), "field 'sdp' must be a non-empty string", "publishStream", MSID),
    (_pub(sdp=5), "field 'sdp' must be a string", "publishStream", MSID),
    (_pub(sdp="v" * (MAX_SDP_LENGTH + 1)), "field 'sdp' must be at most 65536 characters",
     "publishStream", MSID),
    (_pub(hasAudio="true"), "field 'hasAudio' must be a boolean", "publishStream", MSID),
    (_pub(hasVideo=1), "field 'hasVideo' must be a boolean", "publishStream", MSID),
    (_pub(record="false"), "field 'record' must be a boolean", "publishStream", MSID),
    (_pub(mediaProvider=""), "field 'mediaProvider' must be a non-empty string",
     "publishStream", MSID),
    (_pub(mediaProvider=["WebRTC"]), "field 'mediaProvider' must be a non-empty string",
     "publishStream", MSID),
    (_frame("playStream", {"mediaSessionId": MSID, "name": "s"}),
     "playStream: field 'sdp' must be a non-empty string", "playStream", MSID),
    (_frame("playStream", {"mediaSessionId": MSID, "sdp": "v=0"}),
     "playStream: field 'name' must be a non-empty string", "playStream", MSID),
    (_frame("availableStream", {"mediaSessionId": MSID}),
     "availableStream: field 'name' must be a non-empty string", "availableStream", MSID),
    (_frame("snapshot", {"mediaSessionId": MSID, "name": 1}), "field 'name'", "snapshot", MSID),
    (_frame("unPublishStream", {"mediaSessionId": MSID, "name": 5}),
     "unPublishStream: field 'name' must be a non-empty string", "unPublishStream", MSID),
    (_frame("sendStreamEvent", {"mediaSessionId": MSID}),
     "sendStreamEvent: field 'type' must be a non-empty string", "sendStreamEvent", MSID),
    (_frame("sendData", {"payload": {}}), "sendData: field 'operationId' must be a non-empty string",
     "sendData", None),
    (_frame("sendData", {"operationId": 7}), "field 'operationId' must be a non-empty string",
     "sendData", None),
]


@pytest.mark.parametrize(
    "text,info,message_name,media_session_id",
    MALFORMED,
    ids=[f"{i}:{str(case[1])[:40]}" for i, case in enumerate(MALFORMED)],
)
def test_malformed_input_raises_protocol_error(
    text: str | bytes, info: str, message_name: str | None, media_session_id: str | None
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(text)
    err = caught.value
    assert info in err.info
    assert str(err) == err.info
    assert err.message_name == message_name
    assert err.media_session_id == media_session_id


def test_frame_size_limit_applies_to_text_and_bytes() -> None:
    big = _frame("sendData", {"operationId": "op", "payload": "x" * MAX_FRAME_CHARS})
    for form in (big, big.encode()):
        with pytest.raises(ProtocolError, match="larger than"):
            parse_message(form)


# --------------------------------------------------------------------------- builders


def test_encode_always_sends_a_list() -> None:
    assert encode("x") == '{"message":"x","data":[]}'
    assert encode("x", None) == '{"message":"x","data":[null]}'
    assert encode("x", {"a": 1}, "b") == '{"message":"x","data":[{"a":1},"b"]}'


def test_encode_escapes_non_ascii_and_lone_surrogates() -> None:
    # A client may send "\ud800" as a JSON escape; the echo must still be valid UTF-8.
    text = encode("x", "тест\ud800")
    text.encode("utf-8")
    assert json.loads(text)["data"] == ["тест\ud800"]


def test_ping_pong_version() -> None:
    assert ping() == '{"message":"ping","data":[]}'
    assert pong() == '{"message":"pong","data":[]}'
    assert get_version("5.2.0-webcall") == '{"message":"getVersion","data":["5.2.0-webcall"]}'


def test_set_remote_sdp_shape() -> None:
    assert _decoded(set_remote_sdp(MSID, "v=0\r\n")) == {
        "message": "setRemoteSDP",
        "data": [MSID, "v=0\r\n", True],
    }


def test_get_user_data_echoes_and_adds_session_fields() -> None:
    raw = {"appKey": "defaultApp", "mediaProviders": ["WebRTC"], "custom": {"a": 1},
           "status": "bogus", "webRTCMetricsServerDescription": {"ingestPoint": "x"}}
    conn = parse_message(_frame("connection", raw))
    assert isinstance(conn, Connection)
    out = _decoded(get_user_data(conn, "/1.2.3.4:5/6.7.8.9:8443"))
    assert out["message"] == "getUserData"
    assert out["data"] == [
        {
            "appKey": "defaultApp",
            "mediaProviders": ["WebRTC"],
            "custom": {"a": 1},
            "status": "ESTABLISHED",
            "useWsTunnel": False,
            "useWsTunnelPacketization2": False,
            "useBase64BinaryEncoding": False,
            "authToken": "/1.2.3.4:5/6.7.8.9:8443",
            "sessionId": "/1.2.3.4:5/6.7.8.9:8443",
            "forceLogger": False,
        }
    ]
    # The parsed message must not be changed by building the reply.
    assert "webRTCMetricsServerDescription" in conn.raw and conn.raw["status"] == "bogus"


def test_stream_status_full_shape() -> None:
    out = _decoded(
        stream_status(
            media_session_id=MSID,
            name="test",
            published=True,
            status=StreamStatus.PUBLISHING,
            audio_codec="opus",
            video_codec="H264",
            create_date=1544579813186,
        )
    )
    assert out == {
        "message": "notifyStreamStatusEvent",
        "data": [
            {
                "mediaSessionId": MSID, "name": "test", "published": True,
                "hasVideo": True, "hasAudio": True, "status": "PUBLISHING",
                "audioCodec": "opus", "videoCodec": "H264", "record": False,
                "width": 0, "height": 0, "bitrate": 0, "minBitrate": 0, "maxBitrate": 0,
                "quality": 0, "createDate": 1544579813186,
                "streamInfo": {"nodeId": None, "appKey": None, "sessionId": None,
                               "mediaSessionId": MSID, "name": "test", "samplingTime": None,
                               "recordTimestamp": None, "recordStarted": False},
                "mediaProvider": "WebRTC",
            }
        ],
    }


def test_stream_status_info_and_extra() -> None:
    obj = _decoded(
        stream_status(
            media_session_id=MSID,
            name="s",
            published=True,
            status=StreamStatus.UNPUBLISHED,
            info=Info.STOPPED_BY_PUBLISHER_STOP,
            record=True,
            extra={"recordName": "stream-x.mp4", "width": 640},
        )
    )["data"][0]
    assert obj["info"] == "Stopped by publisher stop"
    assert obj["status"] == "UNPUBLISHED" and obj["record"] is True
    assert obj["recordName"] == "stream-x.mp4"
    assert obj["width"] == 640  # extra is merged last
    plain = _decoded(stream_status(media_session_id=MSID, name="s", published=False,
                                   status="PLAYING"))["data"][0]
    assert "info" not in plain and "recordName" not in plain


def test_notify_audio_codec_and_video_format() -> None:
    assert _decoded(notify_audio_codec(MSID, "opus"))["data"] == [MSID, {"name": "opus"}]
    assert _decoded(notify_video_format(MSID, 320, 240)) == {
        "message": "notifyVideoFormat",
        "data": [{"streamerVideoWidth": 320, "streamerVideoHeight": 240,
                  "mediaSessionId": MSID, "status": "RESIZE"}],
    }


@pytest.mark.parametrize("available,expected", [(True, "true"), (False, "false")])
def test_available_stream_status_is_a_string(available: bool, expected: str) -> None:
    obj = _decoded(available_stream(MSID, available, "" if available else Info.STREAM_NOT_FOUND))
    assert obj["message"] == "availableStream"
    (data,) = obj["data"]
    assert set(data) == {"status", "info", "id"}
    assert data["status"] == expected and isinstance(data["status"], str)
    assert data["id"] == MSID
    assert '"status":"%s"' % expected in available_stream(MSID, available)


def test_notify_stream_event() -> None:
    assert _decoded(notify_stream_event(MSID, "audioMuted", {"streamName": "s"}))["data"] == [
        {"mediaSessionId": MSID, "type": "audioMuted", "payload": {"streamName": "s"}}
    ]
    assert _decoded(notify_stream_event(MSID, "videoMuted"))["data"] == [
        {"mediaSessionId": MSID, "type": "videoMuted"}
    ]


def test_data_status() -> None:
    assert _decoded(data_status("op", "ACCEPTED")) == {
        "message": "DataStatusEvent",
        "data": [{"operationId": "op", "status": "ACCEPTED"}],
    }
    assert _decoded(data_status("op", "FAILED", "no backend"))["data"] == [
        {"operationId": "op", "status": "FAILED", "info": "no backend"}
    ]
    with pytest.raises(ValueError):
        data_status("op", "OK")


def test_fail() -> None:
    assert _decoded(fail("Bad request", MSID)) == {
        "message": "fail",
        "data": [{"apiMethod": "StreamStatusEvent", "id": MSID, "status": "FAILED",
                  "info": "Bad request"}],
    }
    assert _decoded(fail("Unknown message: x", api_method="connection"))["data"] == [
        {"apiMethod": "connection", "status": "FAILED", "info": "Unknown message: x"}
    ]


def test_video_rate() -> None:
    text = video_rate("outboundVideoRate", MSID, 685256, 30, 0, 13, 0, 640, 360)
    assert _decoded(text) == {
        "message": "outboundVideoRate",
        "data": [{"mediaSessionId": MSID, "videoRate": 685256, "fps": 30, "nack": 0, "pli": 13,
                  "lostPackets": 0, "width": 640, "height": 360}],
    }
    assert _decoded(video_rate("inboundVideoRate", MSID, 1, 2, 3, 4, 5, 6, 7))["message"] == (
        "inboundVideoRate"
    )
    with pytest.raises(ValueError):
        video_rate("videoRate", MSID, 1, 2, 3, 4, 5, 6, 7)  # type: ignore[arg-type]


@pytest.mark.parametrize("media_session_id", [MSID, 'quote" back\\ é \ud800 \n', ""])
def test_video_rate_is_the_text_json_would_write(media_session_id: str) -> None:
    """The formatted fast path writes exactly what the generic encoder writes, client strings escaped alike."""
    fields = {"mediaSessionId": media_session_id, "videoRate": 685256, "fps": 30, "nack": 1, "pli": 13,
              "lostPackets": 2, "width": 640, "height": 360}
    assert video_rate("outboundVideoRate", media_session_id, 685256, 30, 1, 13, 2, 640, 360) == encode(
        "outboundVideoRate", fields)
    assert _decoded(video_rate("inboundVideoRate", media_session_id, 1, 29.5, 3, 4, 5, 6, 7))["data"][0]["fps"] == 29.5


@pytest.mark.parametrize(
    "text",
    [
        ping(),
        pong(),
        get_version("1"),
        set_remote_sdp(MSID, "v=0"),
        stream_status(media_session_id=MSID, name="s", published=True, status="FAILED",
                      info=Info.STREAM_NAME_ALREADY_IN_USE),
        notify_audio_codec(MSID, "opus"),
        notify_video_format(MSID, 1, 2),
        available_stream(MSID, True),
        notify_stream_event(MSID, "data", {"a": [1, 2]}),
        data_status("op", "ACCEPTED"),
        fail("x"),
        video_rate("inboundVideoRate", MSID, 1, 2, 3, 4, 5, 6, 7),
        get_user_data(Connection("defaultApp", None, False, (), None, raw={"a": 1}), "sid"),
    ],
)
def test_builders_are_compact_json_with_a_data_list(text: str) -> None:
    out = _decoded(text)
    assert text == json.dumps(out, separators=(",", ":"))
