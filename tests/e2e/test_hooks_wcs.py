"""REST hooks and the Origin allow-list through the WCS WebSocket: a real backend (aiohttp on 127.0.0.1) decides.

The backend's first path segment picks its behaviour, and each test gives its app's URL as --hook-url, so what
the clients see is what a user of an application with that backend would see.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from tests.support import peers
from tests.support.hook_backend import HookBackend
from tests.support.wcs_client import WcsClient, WcsClosed
from webcall.hooks import policy as p


class Backend(HookBackend):
    async def answer(self, app: str, method: str, body: dict, raw: bytes, request: web.Request) -> web.StreamResponse:
        if app == "gate":  # denies streams whose name starts with "secret", with or without a message
            if method in ("publishStream", "playStream") and body.get("name", "").startswith("secret-msg"):
                return web.json_response({"message": "Subscription expired"}, status=403)
            if method in ("publishStream", "playStream", "OnDataEvent") and str(body.get("name", "")).startswith(
                    "secret") or body.get("payload") == "forbidden":
                return web.Response(status=403)
            return web.json_response(body)
        if app == "nobody":
            return web.Response(status=403)
        if app == "rename":
            if method == p.CONNECT:
                return web.json_response({**body, "restClientConfig": {
                    "publishStream": {"restPolicy": "OVERWRITE", "restOverwrite": "name"}}})
            if method == p.PUBLISH_STREAM:
                return web.json_response({**body, "name": "renamed-" + body["name"]})
            return web.json_response(body)
        if app == "slow":
            if method == p.PUBLISH_STREAM:
                await asyncio.sleep(30)
            return web.json_response(body)
        if app == "keepalive":
            return web.Response(status=403 if method == p.STREAM_KEEP_ALIVE_EVENT else 200, text="{}")
        return web.Response(status=404)

    def bodies(self, method: str) -> list[dict]:
        return [b for _, m, b, _ in self.requests if m == method]

    async def wait_event(self, method: str, pred, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [b for b in self.bodies(method) if pred(b)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, (method, self.bodies(method))
            await asyncio.sleep(0.02)


@pytest.fixture
async def backend():
    b = Backend()
    await b.start()
    yield b
    await b.stop()


async def test_denied_publish_and_play_get_failed_restricted_access(make_server, backend) -> None:
    server = await make_server(hook_url=backend.url("gate"))
    client = await server.client()
    with pytest.raises(peers.StreamFailed) as denied:
        await peers.publish(client, "secret-cam")
    assert denied.value.status == "FAILED" and denied.value.info == "Restricted access"
    with pytest.raises(peers.StreamFailed) as denied:
        await peers.publish(client, "secret-msg-cam")
    assert denied.value.info == "Subscription expired"  # the backend's own words
    assert server.hub.registry.names() == set()

    allowed = await peers.publish(client, "open-cam")
    await allowed.wait_status("PUBLISHING", timeout=10)
    body = backend.bodies("publishStream")[-1]
    assert body["name"] == "open-cam" and body["appKey"] == "defaultApp" and body["sessionId"]
    # Every status the client saw went to the backend as well.
    await backend.wait_event("StreamStatusEvent", lambda b: b["name"] == "open-cam" and b["status"] == "PUBLISHING")
    await backend.wait_event("StreamStatusEvent", lambda b: b["name"] == "secret-cam" and b["status"] == "FAILED")
    await backend.wait_event("ConnectionStatusEvent", lambda b: b["status"] == "ESTABLISHED")
    connect = backend.bodies("connect")[0]
    assert connect["appKey"] == "defaultApp" and "origin" in connect

    player_client = await server.client()
    player = await peers.play(player_client, "open-cam")
    await player.wait_decoded_frames(5, timeout=10)
    await client.send("sendData", {"operationId": "op-1", "payload": "forbidden"})
    answer = await client.wait_for("DataStatusEvent", timeout=5)
    assert answer["data"][0]["status"] == "FAILED" and answer["data"][0]["info"] == "Restricted access"

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.rest_url}/metrics") as response:
            metrics = await response.text()
    assert 'webcall_hook_invocations_total{app="defaultApp",method="publishStream",outcome="denied"} 2' in metrics
    assert 'webcall_hook_invocations_total{app="defaultApp",method="publishStream",outcome="allowed"} 1' in metrics

    await player.stop()
    await allowed.stop()
    await client.close()
    await player_client.close()
    await backend.wait_event("ConnectionStatusEvent", lambda b: b["status"] == "DISCONNECTED")
    await server.wait_empty()


async def test_backend_renames_the_stream(make_server, backend) -> None:
    server = await make_server(hook_url=backend.url("rename"))
    client = await server.client()
    publisher = await peers.publish(client, "cam")
    await publisher.wait_status("PUBLISHING", timeout=10)
    assert server.hub.registry.names() == {"renamed-cam"}
    viewer = await server.client()
    player = await peers.play(viewer, "renamed-cam")
    await player.wait_decoded_frames(5, timeout=10)
    await player.stop()
    await publisher.stop()
    await client.close()
    await viewer.close()
    await server.wait_empty()


async def test_denied_connection_is_closed_before_get_user_data(make_server, backend) -> None:
    server = await make_server(hook_url=backend.url("nobody"))
    with pytest.raises(WcsClosed):
        await WcsClient.connect(server.url, timeout=5)
    assert backend.bodies("connect")
    await server.wait_empty()


async def test_a_slow_backend_fails_one_publish_and_delays_nobody_else(make_server, backend) -> None:
    server = await make_server(hook_url=backend.url("slow"), hook_timeout=1.5)
    slow_client = await server.client()
    other = await server.client()
    started = time.monotonic()
    publishing = asyncio.ensure_future(peers.publish(slow_client, "waits"))
    await asyncio.sleep(0.3)
    # Meanwhile another client's session goes on: its ping is answered at once.
    t0 = time.monotonic()
    await other.send("ping", None)
    await other.wait_for("pong", timeout=2)
    assert time.monotonic() - t0 < 0.5 and not publishing.done()
    with pytest.raises(peers.StreamFailed) as denied:
        await publishing
    assert denied.value.info == "Restricted access"
    assert 1.3 < time.monotonic() - started < 4.0  # the hook's timeout, not the backend's 30 s
    await slow_client.close()
    await other.close()
    await server.wait_empty()


async def test_keep_alive_403_terminates_the_stream(make_server, backend) -> None:
    server = await make_server(hook_url=backend.url("keepalive"), keep_alive_interval=0.5)
    client = await server.client()
    publisher = await peers.publish(client, "kept")
    await publisher.wait_status("PUBLISHING", timeout=10)
    status = await publisher.wait_status("UNPUBLISHED", timeout=5)
    assert status["data"][0]["info"] == "Terminated by keep-alive"
    await client.close()
    await server.wait_empty()


async def test_origin_allow_list(make_server) -> None:
    server = await make_server(allow_origins="https://app.example.com")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.url, headers={"Origin": "https://evil.example.net"})
        assert refused.value.status == 403
        ws = await session.ws_connect(server.url, headers={"Origin": "https://app.example.com"})
        await ws.close()
    assert server.server.refused_origins == 1
