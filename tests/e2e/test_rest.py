"""The WCS REST API (spec §12), stream events and data (§9) and snapshots (§10), with real clients.

Each stream is published or played over its own WebSocket session, as separate browsers would. Many peers
share one process here, so pictures are small and players that need no picture play audio only; the
connect timeout is the production default, not the tests' short one.
"""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from typing import Any

import aiohttp
import av
import pytest

from tests.support import peers
from tests.support.media import pattern_present, read_frame_counter
from webcall.eventloop import loop_name

STREAM_FIELDS = {
    "appKey", "sessionId", "mediaSessionId", "name", "published", "hasVideo", "hasAudio", "status", "audioCodec",
    "videoCodec", "record", "width", "height", "bitrate", "minBitrate", "maxBitrate", "quality", "history", "gop",
    "fps", "audioBitrate", "codecImpl", "transport", "cvoExtension", "createDate", "mediaType", "mediaProvider",
    "metrics",
}


@pytest.fixture
async def server(server_shapes):
    """Every test here runs against one process and against two media workers (conftest.SHAPES)."""
    return server_shapes


async def all_rates_measured(server, count: int, timeout: float = 5.0) -> None:
    """Each stream is sampled once per rate interval at its own phase: wait until all have non-zero rates."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _, streams = await call(server, "/rest-api/stream/find_all", method="GET")
        rates = [v for s in streams for k, v in s["metrics"].items() if k in ("VIDEO_RATE", "AUDIO_RATE")]
        if len(streams) == count and rates and all(v > 0 for v in rates):
            return
        assert asyncio.get_running_loop().time() < deadline, streams
        await asyncio.sleep(0.1)


async def call(server, path: str, body: Any = None, *, method: str = "POST", data: bytes | None = None,
               content_type: str = "application/json") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        elif data is not None:
            kwargs["data"] = data
            kwargs["headers"] = {"Content-Type": content_type}
        async with http.request(method, server.rest_url + path, **kwargs) as r:
            return r.status, await r.json()


SMALL = {"width": 320, "height": 240}
SNAPSHOT_LAG_FRAMES = 10  # a third of a second at 30 fps: encoder queue and delivery on a slow machine


async def wait_counter(track, counter: int, timeout: float = 10.0) -> None:
    """Wait until the publisher's pattern track has handed frame `counter` to its encoder."""
    deadline = asyncio.get_running_loop().time() + timeout
    while track.counter <= counter:
        assert asyncio.get_running_loop().time() < deadline, (track.counter, counter)
        await asyncio.sleep(0.02)


@pytest.fixture
async def server(make_server):
    return await make_server(connect_timeout=10.0)


async def publish(server, name: str, **kwargs) -> tuple[Any, peers.Publisher]:
    client = await server.client()
    publisher = await peers.publish(client, name, **kwargs)
    await publisher.wait_status("PUBLISHING", timeout=10)
    return client, publisher


async def play(server, name: str, video: bool = True) -> tuple[Any, peers.Player]:
    client = await server.client()
    player = await peers.play(client, name, video=video)
    await player.wait_status("PLAYING", timeout=10)
    return client, player


async def close_all(server, streams, clients) -> None:
    for stream in streams:
        await stream.close()
    for client in clients:
        await client.close()
    await server.wait_empty()


def decode_png(b64: str) -> av.VideoFrame:
    container = av.open(io.BytesIO(base64.b64decode(b64)))
    assert container.format.name in ("png_pipe", "image2")
    return next(container.decode(video=0))


async def test_find_and_terminate(server) -> None:
    alpha_client, alpha = await publish(server, "alpha", **SMALL)
    beta_client, beta = await publish(server, "beta", video_codec="H264", **SMALL)
    a1_client, a1 = await play(server, "alpha", video=False)
    a2_client, a2 = await play(server, "alpha")
    b1_client, b1 = await play(server, "beta", video=False)
    clients = [alpha_client, beta_client, a1_client, a2_client, b1_client]
    await a2.wait_frames(5, timeout=10)
    await alpha_client.wait_for("inboundVideoRate", timeout=5)  # rates have been measured
    await a2_client.wait_for("outboundVideoRate", timeout=5)
    await all_rates_measured(server, count=5)

    # find_all: GET with no body (the SDK's rest-module) and POST with {}.
    status, everything = await call(server, "/rest-api/stream/find_all", method="GET")
    assert status == 200 and len(everything) == 5
    status, posted = await call(server, "/rest-api/stream/find_all", {})
    assert status == 200 and [s["mediaSessionId"] for s in posted] == [s["mediaSessionId"] for s in everything]
    by_id = {s["mediaSessionId"]: s for s in everything}
    pub = by_id[alpha.media_session_id]
    assert STREAM_FIELDS <= set(pub), STREAM_FIELDS - set(pub)
    assert "sdp" not in pub  # it carries the client's ICE credentials
    assert (pub["name"], pub["published"], pub["status"], pub["mediaType"]) == ("alpha", True, "PUBLISHING", "publish")
    assert (pub["videoCodec"], pub["audioCodec"], pub["width"], pub["height"]) == ("VP8", "opus", 320, 240)
    assert pub["sessionId"] == alpha_client.auth_token and pub["appKey"] == "defaultApp"
    assert pub["metrics"]["VIDEO_RATE"] > 0 and pub["metrics"]["VIDEO_WIDTH"] == 320, pub["metrics"]
    assert pub["metrics"]["VIDEO_K_FRAMES"] >= 1 and pub["metrics"]["AUDIO_RATE"] > 0
    player = by_id[a2.media_session_id]
    assert (player["published"], player["status"], player["mediaType"]) == (False, "PLAYING", "play")
    assert player["metrics"]["VIDEO_RATE"] > 0 and player["metrics"]["VIDEO_HEIGHT"] == 240
    assert by_id[a1.media_session_id]["hasVideo"] is False
    assert by_id[beta.media_session_id]["videoCodec"] == "H264"

    status, found = await call(server, "/rest-api/stream/find", {"name": "alpha", "published": False})
    assert status == 200 and {s["mediaSessionId"] for s in found} == {a1.media_session_id, a2.media_session_id}
    status, found = await call(server, "/rest-api/stream/find",
                               {"mediaSessionId": beta.media_session_id, "name": None, "published": None})
    assert status == 200 and [s["name"] for s in found] == ["beta"]
    status, error = await call(server, "/rest-api/stream/find", {"name": "nope"})
    assert status == 404 and error["message"] == "Stream not found"
    status, metrics = await call(server, "/rest-api/stream/metrics", {"mediaSessionId": b1.media_session_id})
    assert status == 200 and metrics["AUDIO_RATE"] > 0 and "VIDEO_RATE" not in metrics  # an audio-only player

    # Connections: what each client declared, never its credentials.
    status, connections = await call(server, "/rest-api/connection/find_all", method="GET")
    assert status == 200 and len(connections) == 5
    assert all("authToken" not in c and c["status"] == "ESTABLISHED" for c in connections)
    status, found = await call(server, "/rest-api/connection/find", {"sessionId": alpha_client.auth_token})
    assert status == 200 and found[0]["mediaSessionIds"] == [alpha.media_session_id]

    # Terminate one player: only it stops.
    status, result = await call(server, "/rest-api/stream/terminate", {"mediaSessionId": a1.media_session_id})
    assert status == 200 and result == {"terminated": [a1.media_session_id]}
    msg = await a1.wait_status("STOPPED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by rest /terminate"
    await a2.wait_frames(10, since=len(a2.frames), timeout=5)

    # Terminate a publisher by filter: it and its players stop, alpha does not.
    status, result = await call(server, "/rest-api/stream/terminate", {"name": "beta", "published": True})
    assert status == 200 and result == {"terminated": [beta.media_session_id]}
    msg = await beta.wait_status("UNPUBLISHED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by rest /terminate"
    msg = await b1.wait_status("STOPPED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by rest /terminate"
    await a2.wait_frames(10, since=len(a2.frames), timeout=5)
    assert alpha.status == "PUBLISHING" and a2.status == "PLAYING"
    status, _ = await call(server, "/rest-api/stream/terminate", {"mediaSessionId": beta.media_session_id})
    assert status == 404

    # An explicit {} ends everything that is left.
    status, result = await call(server, "/rest-api/stream/terminate", {})
    assert status == 200 and set(result["terminated"]) == {alpha.media_session_id, a2.media_session_id}
    await alpha.wait_status("UNPUBLISHED", timeout=5)
    await a2.wait_status("STOPPED", timeout=5)
    assert (await call(server, "/rest-api/stream/find_all", method="GET")) == (200, [])
    await close_all(server, [alpha, beta, a1, a2, b1], clients)


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/rest-api/stream/find", {"body": {"published": "yes"}}, 400),
        ("/rest-api/stream/find", {"body": {"name": 7}}, 400),
        ("/rest-api/stream/find", {"body": ["name"]}, 400),
        ("/rest-api/stream/find", {"data": b"{not json"}, 400),
        ("/rest-api/stream/find", {"data": b'{"name":"x"}', "content_type": "text/plain"}, 415),
        ("/rest-api/stream/terminate", {"data": b""}, 400),  # "stop everything" must be said explicitly
        ("/rest-api/stream/terminate", {"body": {"mediaSessionIds": "abc"}}, 400),
        ("/rest-api/stream/snapshot", {"body": {}}, 400),
        ("/rest-api/stream/event/send", {"body": {"streamName": "x", "type": "bogus", "payload": {}}}, 400),
        ("/rest-api/stream/event/send", {"body": {"streamName": "x", "payload": {}}}, 404),
        ("/rest-api/data/send", {"body": {"sessionId": "nobody", "payload": {}}}, 404),
        ("/rest-api/data/send", {"body": {"sessionId": "nobody"}}, 400),
        ("/rest-api/connection/terminate", {"body": {"sessionId": "nobody"}}, 404),
        ("/rest-api/stream/terminate", {"method": "GET"}, 405),
        ("/rest-api/no/such/thing", {}, 404),
    ],
)
async def test_bad_requests_get_json_errors(server, path: str, kwargs: dict[str, Any], status: int) -> None:
    got, error = await call(server, path, **kwargs)
    assert got == status, error
    assert error["status"] == status and error["path"] == path and error["message"]


async def test_events_and_data_reach_exactly_the_right_clients(server) -> None:
    pub_client, publisher = await publish(server, "ev", **SMALL)
    other_pub_client, other_publisher = await publish(server, "other", **SMALL)
    p1_client, p1 = await play(server, "ev", video=False)
    p2_client, p2 = await play(server, "ev", video=False)
    p3_client, p3 = await play(server, "other", video=False)
    clients = [pub_client, other_pub_client, p1_client, p2_client, p3_client]

    async def events(client, player, since: int) -> dict[str, Any]:
        msg = await client.wait_for("notifyStreamEvent", mediaSessionId=player.media_session_id, since=since)
        return msg["data"][0]

    # sendStreamEvent data, then a mute (the SDK sends no payload with it).
    marks = [len(c.messages) for c in (p1_client, p2_client)]
    await pub_client.send("sendStreamEvent", {"mediaSessionId": publisher.media_session_id, "type": "data",
                                              "payload": {"chat": "hello"}})
    await pub_client.send("sendStreamEvent", {"mediaSessionId": publisher.media_session_id, "type": "videoMuted"})
    for client, player, mark in zip((p1_client, p2_client), (p1, p2), marks):
        first = await events(client, player, mark)
        assert first == {"mediaSessionId": player.media_session_id, "type": "data", "payload": {"chat": "hello"}}
        second = await events(client, player, mark)
        assert second["type"] == "videoMuted" and second["payload"] == {"streamName": "ev"}

    # The same through REST.
    status, result = await call(server, "/rest-api/stream/event/send",
                                {"streamName": "ev", "payload": {"from": "backend"}})
    assert status == 200 and result == {"delivered": 2}
    for client, player, mark in zip((p1_client, p2_client), (p1, p2), marks):
        event = await events(client, player, mark)
        assert event["type"] == "data" and event["payload"] == {"from": "backend"}

    # sendData → ACCEPTED; /data/send → OnDataEvent to that one session.
    await p1_client.send("sendData", {"operationId": "op-1", "payload": {"a": 1}})
    msg = await p1_client.wait_for("DataStatusEvent")
    assert msg["data"][0] == {"operationId": "op-1", "status": "ACCEPTED"}
    operation = str(uuid.uuid4())
    status, result = await call(server, "/rest-api/data/send", {
        "nodeId": "node", "sessionId": p2_client.auth_token, "operationId": operation, "payload": {"b": 2}})
    assert status == 200 and result == {"operationId": operation}
    msg = await p2_client.wait_for("OnDataEvent")
    assert msg["data"][0]["payload"] == {"b": 2} and msg["data"][0]["operationId"] == operation
    assert msg["data"][0]["sessionId"] == p2_client.auth_token

    # A barrier instead of a sleep: one more /data/send to every session. A WebSocket keeps its order, so once
    # a session has that, anything misrouted to it earlier has arrived too.
    for client in (p1_client, p3_client, pub_client, other_pub_client):
        barrier = str(uuid.uuid4())
        status, _ = await call(server, "/rest-api/data/send", {"sessionId": client.auth_token,
                                                                "operationId": barrier, "payload": {}})
        assert status == 200
        await client.wait_for(lambda m, b=barrier: m.get("message") == "OnDataEvent"
                              and m["data"][0].get("operationId") == b, timeout=5)
    assert p3_client.find("notifyStreamEvent") == [] and len(p3_client.find("OnDataEvent")) == 1  # the barrier
    assert len(p1_client.find("OnDataEvent")) == 1
    assert pub_client.find("notifyStreamEvent") == [] and other_pub_client.find("notifyStreamEvent") == []

    # /connection/terminate closes that session only: its player stops, the others go on.
    status, _ = await call(server, "/rest-api/connection/terminate", {"sessionId": p2_client.auth_token})
    assert status == 200
    await p2_client.wait_closed(timeout=5)
    status, left = await call(server, "/rest-api/stream/find", {"name": "ev"})
    assert status == 200 and {s["mediaSessionId"] for s in left} == {publisher.media_session_id, p1.media_session_id}
    await close_all(server, [publisher, other_publisher, p1, p2, p3], clients)


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_snapshot_shows_the_published_picture(server, codec: str) -> None:
    pub_client, publisher = await publish(server, "snap", video_codec=codec)
    track = publisher.video_track
    # Well past the first keyframe, so that a snapshot of the keyframe itself would be visibly stale.
    await wait_counter(track, 45)
    asker = await server.client()
    msid = str(uuid.uuid1())  # a NEW stream of the asker's: the SDK allows snapshot() before play()
    asked_at = track.counter
    await asker.send("snapshot", {"name": "snap", "mediaSessionId": msid})
    msg = await asker.wait_for("notifyStreamEvent", mediaSessionId=msid, timeout=10)
    answered_at = track.counter
    event = msg["data"][0]
    assert event["type"] == "snapshotCompleted", event
    frame = decode_png(event["payload"]["snapshot"])
    assert (frame.width, frame.height) == (640, 480)
    counter = read_frame_counter(frame)
    assert counter is not None and pattern_present(frame)
    # The newest frame the server had: sent before the answer, and at most a few frames (encoder and
    # network) older than the request. (The track's counter is the NEXT frame's.)
    assert asked_at - SNAPSHOT_LAG_FRAMES <= counter < answered_at, (asked_at, counter, answered_at)

    await wait_counter(track, answered_at + 10)  # the stream moves on...
    asked_at = track.counter
    status, result = await call(server, "/rest-api/stream/snapshot", {"streamName": "snap"})
    assert status == 200
    frame = decode_png(result["data"])
    later = read_frame_counter(frame)
    assert later is not None and pattern_present(frame)
    assert later > counter and later >= asked_at - SNAPSHOT_LAG_FRAMES, (counter, asked_at, later)  # ...and so does the snapshot

    # Unknown stream: snapshotFailed / 404.
    await asker.send("snapshot", {"name": "missing", "mediaSessionId": msid})
    msg = await asker.wait_for("notifyStreamEvent", mediaSessionId=msid, timeout=5)
    assert msg["data"][0] == {"mediaSessionId": msid, "type": "snapshotFailed",
                              "payload": {"info": "Stream not found"}}
    status, error = await call(server, "/rest-api/stream/snapshot", {"streamName": "missing"})
    assert status == 404 and error["message"] == "Stream not found"
    await close_all(server, [publisher], [pub_client, asker])


async def test_snapshot_of_audio_only_stream_fails(server) -> None:
    pub_client, publisher = await publish(server, "voice", video=False)
    await pub_client.send("snapshot", {"name": "voice", "mediaSessionId": publisher.media_session_id})
    msg = await pub_client.wait_for("notifyStreamEvent", mediaSessionId=publisher.media_session_id, timeout=5)
    assert msg["data"][0]["type"] == "snapshotFailed"
    assert msg["data"][0]["payload"] == {"info": "Stream has no video"}
    status, error = await call(server, "/rest-api/stream/snapshot", {"streamName": "voice"})
    assert status == 500 and error["message"] == "Stream has no video"
    await close_all(server, [publisher], [pub_client])


async def test_health_on_both_ports(server) -> None:
    async with aiohttp.ClientSession() as http:
        for base in (server.rest_url, f"http://127.0.0.1:{server.server.http_port}"):
            async with http.get(base + "/health") as r:
                assert r.status == 200
                body = await r.json()
                assert {k: body.pop(k) for k in ("tasks", "threads")}.keys() == {"tasks", "threads"}
                assert body == {"status": "ok", "sessions": 0, "streams": 0, "players": 0,
                                "event_loop": loop_name()}  # in process: the test's own loop
