"""Raw WebSocket clients against the real server: message names, fields and routing per the spec."""

from __future__ import annotations

import pytest

import asyncio
import json
import uuid

import aiohttp

from tests.support import peers
from tests.support.wcs_client import WcsClient


@pytest.fixture
async def server(server_shapes):
    """Every test here runs against one process and against two media workers (conftest.SHAPES)."""
    return server_shapes


async def test_connection_handshake(server) -> None:
    a = await server.client(custom={"user": "alice"})
    b = await server.client()
    user_data = a.find("getUserData")[0]["data"][0]
    assert user_data["status"] == "ESTABLISHED"
    assert user_data["authToken"] == user_data["sessionId"]
    assert user_data["appKey"] == "defaultApp" and user_data["custom"] == {"user": "alice"}
    assert "webRTCMetricsServerDescription" not in user_data
    assert user_data["authToken"] != b.find("getUserData")[0]["data"][0]["authToken"]
    version = await a.wait_for("getVersion")
    assert isinstance(version["data"][0], str)
    names = [m["message"] for m in a.messages]
    assert names.index("getUserData") < names.index("getVersion")
    await a.close()
    await b.close()
    await server.wait_empty()


async def test_server_pings_and_drops_silent_clients(make_server) -> None:
    server = await make_server(ping_interval=0.2, ping_probes=3)
    alive = await server.client()  # answers pings
    silent = await server.client(auto_pong=False)
    ping = await alive.wait_for("ping", timeout=2)
    assert ping["data"] == []
    await silent.wait_closed(timeout=3)
    for _ in range(3):  # three more ping rounds, each answered: a client that answers is never dropped
        await alive.wait_for("ping", timeout=2)
    assert not alive.closed
    assert len(server.hub.sessions) == 1
    await alive.close()
    await silent.close()
    await server.wait_empty()


async def test_client_ping_gets_pong(server) -> None:
    client = await server.client()
    await client.send("ping", None)
    pong = await client.wait_for("pong")
    assert pong["data"] == []
    await client.close()


async def test_messages_before_connection_fail(server) -> None:
    client = await WcsClient.open(server.url)
    await client.send("availableStream", {"mediaSessionId": "x1", "name": "a"})
    fail = await client.wait_for("fail")
    assert fail["data"][0]["info"] == "Session not ready"
    await client.close()


async def test_available_stream_uses_strings_and_id(server) -> None:
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "avail")
    await publisher.wait_status("PUBLISHING", timeout=10)
    client = await server.client()
    await client.send("availableStream", {"mediaSessionId": "req-1", "name": "avail"})
    yes = await client.wait_for("availableStream")
    assert yes["data"][0] == {"status": "true", "info": "", "id": "req-1"}
    await client.send("availableStream", {"mediaSessionId": "req-2", "name": "nope"})
    no = await client.wait_for("availableStream")
    assert no["data"][0]["status"] == "false" and no["data"][0]["id"] == "req-2"
    assert no["data"][0]["info"] == "Stream not found"
    await publisher.stop()
    await pub_client.close()
    await client.close()
    await server.wait_empty()


async def test_play_unknown_and_duplicate_publish(server) -> None:
    client = await server.client()
    player = await peers.play(client, "ghost", raise_on_failure=False)
    assert player.status == "FAILED"
    msg = player.status_messages()[-1]
    assert msg["data"][0]["info"] == "Stream not found" and msg["data"][0]["published"] is False
    await player.close()

    first = await peers.publish(client, "dup")
    other = await server.client()
    second = await peers.publish(other, "dup", raise_on_failure=False)
    assert second.status == "FAILED"
    msg = second.status_messages()[-1]
    assert msg["data"][0]["info"] == "Stream name is already in use"
    assert msg["data"][0]["mediaSessionId"] == second.media_session_id
    await first.wait_status("PUBLISHING", timeout=10)  # the first publisher is unaffected
    await second.close()
    await first.stop()
    await client.close()
    await other.close()
    await server.wait_empty()


async def test_other_media_providers_fail_clearly(server) -> None:
    client = await server.client()
    cases = [  # MSE and WSPlayer play (tests/e2e/test_mse.py) but cannot publish; Flash is not served
        ("publishStream", "MSE", "Media provider MSE is not supported"),
        ("publishStream", "WSPlayer", "Media provider WSPlayer is not supported"),
        ("playStream", "Flash", "Media provider Flash is not supported"),
        ("playStream", "MSE", "Stream not found"),
    ]
    for message, provider, info in cases:
        msid = str(uuid.uuid1())
        await client.send(message, {"mediaSessionId": msid, "name": "x", "mediaProvider": provider, "sdp": "v=0"})
        msg = await client.wait_for("notifyStreamStatusEvent", mediaSessionId=msid)
        assert msg["data"][0]["status"] == "FAILED" and msg["data"][0]["info"] == info, msg
    await client.close()


async def test_send_data_and_stream_events_relay(server) -> None:
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "events")
    await publisher.wait_status("PUBLISHING", timeout=10)
    watchers = [await server.client() for _ in range(2)]
    players = [await peers.play(c, "events") for c in watchers]
    for player in players:
        await player.wait_status("PLAYING", timeout=10)

    op = str(uuid.uuid4())
    await pub_client.send("sendData", {"operationId": op, "payload": {"hello": 1}})
    status = await pub_client.wait_for("DataStatusEvent")
    assert status["data"][0] == {"operationId": op, "status": "ACCEPTED"}

    await pub_client.send("sendStreamEvent", {"mediaSessionId": publisher.media_session_id, "type": "audioMuted"})
    await pub_client.send("sendStreamEvent", {"mediaSessionId": publisher.media_session_id, "type": "data",
                                              "payload": {"text": "hi"}})
    for player, client in zip(players, watchers):
        muted = await client.wait_for("notifyStreamEvent", mediaSessionId=player.media_session_id)
        assert muted["data"][0]["type"] == "audioMuted"
        assert muted["data"][0]["payload"]["streamName"] == "events"
        data = await client.wait_for("notifyStreamEvent", mediaSessionId=player.media_session_id)
        assert data["data"][0]["type"] == "data" and data["data"][0]["payload"] == {"text": "hi"}

    for player in players:
        await player.stop()
    await publisher.stop()
    for client in [pub_client, *watchers]:
        await client.close()
    await server.wait_empty()


async def test_client_with_permessage_deflate_reads_every_message(server) -> None:
    """Browsers negotiate permessage-deflate. The server may send any message uncompressed (RFC 7692 §6), and
    a client that compresses its own messages is understood."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url, compress=15, heartbeat=None) as ws:
            assert ws.compress == 15  # the extension was negotiated
            await ws.send_str(json.dumps({"message": "connection", "data": [{"appKey": "defaultApp"}]}))
            seen = []
            while "getVersion" not in seen:
                reply = await asyncio.wait_for(ws.receive(), 5)
                assert reply.type == aiohttp.WSMsgType.TEXT
                seen.append(json.loads(reply.data)["message"])
            assert seen[0] == "getUserData"
            await ws.send_str(json.dumps({"message": "ping", "data": []}))
            while (reply := json.loads((await asyncio.wait_for(ws.receive(), 5)).data))["message"] != "pong":
                pass


async def test_a_socket_that_never_speaks_is_closed(make_server) -> None:
    """Before its first message a socket is neither a session nor a media socket (spec §11): one that says
    nothing is closed as a silent session would be, after ping_interval × (ping_probes + 1)."""
    server = await make_server(ping_interval=0.2, ping_probes=2)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url, heartbeat=None) as ws:
            started = asyncio.get_running_loop().time()
            message = await asyncio.wait_for(ws.receive(), 5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert 0.5 <= asyncio.get_running_loop().time() - started < 3
    assert not server.hub.sessions
