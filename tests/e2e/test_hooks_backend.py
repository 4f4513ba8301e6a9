"""REST hooks against a real backend: an aiohttp app on 127.0.0.1 started by each test.

The backend's first path segment picks its behaviour (allow, deny, rename, slow, ...), so one server plays
several applications, each with its own hook URL.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp import web

from tests.support.hook_backend import HookBackend
from webcall.hooks import Hooks, HookSettings, keep_alive_loop
from webcall.hooks import policy as p

SECRET = "s3cret"


class Backend(HookBackend):
    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()  # lets the "hang" app's requests finish

    async def answer(self, app: str, method: str, body: dict, raw: bytes, request: web.Request) -> web.StreamResponse:
        if app == "allow":
            return web.json_response(body)
        if app == "deny":
            return web.Response(status=403)
        if app == "denymsg":
            return web.json_response({"message": "Subscription expired"}, status=403)
        if app == "rename":
            if method == "connect":
                return web.json_response({**body, "restClientConfig": {
                    "publishStream": {"restPolicy": "OVERWRITE", "restOverwrite": "name"}}})
            return web.json_response({**body, "name": "renamed-" + body["name"], "record": True})
        if app in ("slow", "slowlog"):
            if method == "connect":
                config = {"publishStream": {"restOnError": "LOG"}} if app == "slowlog" else {}
                return web.json_response({**body, "restClientConfig": config})
            await asyncio.sleep(30)
        if app == "badjson":
            return web.Response(text="{not json", content_type="application/json")
        if app == "hmac":
            ok = p.check_signature(request.headers.get("Authorization"), raw, SECRET)
            return web.json_response(body) if ok else web.Response(status=403)
        if app == "hang":
            if method.endswith("Event"):
                await self.release.wait()
            return web.json_response(body)
        if app == "keepalive":
            return web.Response(status=403 if method == p.STREAM_KEEP_ALIVE_EVENT else 200, text="{}")
        return web.Response(status=404)

    def methods(self, app: str) -> list[str]:
        return [m for a, m, _, _ in self.requests if a == app]


@pytest.fixture
async def backend():
    b = Backend()
    await b.start()
    yield b
    b.release.set()
    await b.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def make_hooks(backend):
    made: list[Hooks] = []

    def make(apps: list[str] | None = None, **settings) -> Hooks:
        urls = {a: backend.url(a) for a in apps or []}
        urls.update(settings.pop("urls", {}))
        hooks = Hooks(HookSettings(urls=urls, node_id="node1", **settings))
        made.append(hooks)
        return hooks

    yield make
    for hooks in made:
        await hooks.close()


PUBLISH = {"mediaSessionId": "m1", "name": "cam", "published": True, "record": False, "sdp": "v=0"}


async def test_no_url_allows_everything_without_a_request(backend, make_hooks) -> None:
    client = make_hooks(["allow"]).client("otherApp", "/s1")
    decision = await client.invoke(p.PUBLISH_STREAM, PUBLISH)
    assert decision.allowed and not decision.requested
    assert not client.event(p.STREAM_STATUS_EVENT, PUBLISH)
    assert await client.keep_alive(PUBLISH)
    assert backend.requests == []


async def test_allowed_with_the_client_object_plus_ids(backend, make_hooks) -> None:
    client = make_hooks(["allow"]).client("allow", "/1.2.3.4:5/6.7.8.9:8080")
    assert (await client.invoke(p.CONNECT, {"appKey": "allow", "clientVersion": "2.0"})).allowed
    decision = await client.invoke(p.PUBLISH_STREAM, PUBLISH)
    assert decision.allowed and decision.status == 200
    app, method, body, headers = backend.requests[-1]
    assert (app, method) == ("allow", "publishStream")
    assert body == {**PUBLISH, "nodeId": "node1", "appKey": "allow", "sessionId": "/1.2.3.4:5/6.7.8.9:8080"}
    assert headers["Content-Type"] == "application/json" and "Authorization" not in headers
    assert decision.body == body


async def test_denied_with_restricted_access_or_the_backends_message(make_hooks) -> None:
    hooks = make_hooks(["deny", "denymsg"])
    decision = await hooks.client("deny", "/s").invoke(p.PLAY_STREAM, PUBLISH)
    assert (decision.allowed, decision.status, decision.info) == (False, 403, "Restricted access")
    decision = await hooks.client("denymsg", "/s").invoke(p.PUBLISH_STREAM, PUBLISH)
    assert (decision.allowed, decision.info) == (False, "Subscription expired")
    assert hooks.stats.invocations[("deny", "playStream", "denied")] == 1


async def test_overwrite_renames_the_stream(make_hooks) -> None:
    client = make_hooks(["rename"]).client("rename", "/s")
    assert (await client.invoke(p.CONNECT, {})).allowed
    decision = await client.invoke(p.PUBLISH_STREAM, PUBLISH)
    obj = client.apply(p.PUBLISH_STREAM, dict(PUBLISH), decision)
    assert obj["name"] == "renamed-cam" and obj["record"] is False  # only restOverwrite's fields
    # playStream has no OVERWRITE: the backend's answer changes nothing.
    play = dict(PUBLISH, published=False)
    assert client.apply(p.PLAY_STREAM, play, await client.invoke(p.PLAY_STREAM, play)) == play


async def test_timeout_denies_unless_rest_on_error_is_log(make_hooks) -> None:
    hooks = make_hooks(["slow", "slowlog"], timeout=0.3)
    for app, allowed in (("slow", False), ("slowlog", True)):
        client = hooks.client(app, "/s")
        assert (await client.invoke(p.CONNECT, {})).allowed
        started = time.monotonic()
        decision = await client.invoke(p.PUBLISH_STREAM, PUBLISH)
        assert time.monotonic() - started < 1.5
        assert decision.allowed is allowed and decision.error == "timeout"
        assert hooks.stats.errors[(app, "publishStream")] == 1


async def test_bad_json_and_connection_refused_are_denied(make_hooks) -> None:
    hooks = make_hooks(["badjson"], urls={"gone": f"http://127.0.0.1:{free_port()}/x"})
    decision = await hooks.client("badjson", "/s").invoke(p.PUBLISH_STREAM, PUBLISH)
    assert (decision.allowed, decision.info) == (False, "Restricted access") and "bad answer" in decision.error
    decision = await hooks.client("gone", "/s").invoke(p.CONNECT, {})
    assert not decision.allowed and decision.error.startswith("connection error")


async def test_hmac_signature(backend, make_hooks) -> None:
    decision = await make_hooks(["hmac"], secret=SECRET).client("hmac", "/s").invoke(p.CONNECT, {"x": "é"})
    assert decision.allowed
    _, _, body, headers = backend.requests[-1]
    assert headers["Authorization"].startswith("WCS ") and len(headers["Authorization"]) == 4 + 32
    assert not (await make_hooks(["hmac"], secret="wrong").client("hmac", "/s").invoke(p.CONNECT, {})).allowed
    assert not (await make_hooks(["hmac"]).client("hmac", "/s").invoke(p.CONNECT, {})).allowed


async def test_a_hanging_backend_delays_neither_event_callers_nor_other_apps(backend, make_hooks) -> None:
    hooks = make_hooks(["hang", "allow"], timeout=5.0, queue_size=2)
    hanging = [hooks.client("hang", f"/h{i}") for i in range(20)]
    started = time.monotonic()
    for client in hanging:
        for _ in range(10):
            client.event(p.STREAM_STATUS_EVENT, PUBLISH)
    assert time.monotonic() - started < 0.2  # 200 events queued or dropped without waiting
    await asyncio.sleep(0.2)  # every worker is now stuck in a request
    assert len(backend.methods("hang")) == 20
    # Each client queued 2 of its 10 (its task had not run yet) and dropped 8, counted; now 1 is in flight.
    assert hooks.stats.events_dropped[("hang", "StreamStatusEvent")] == 20 * 8
    assert hooks.stats.dropped_total == 160
    assert sum(client.pending for client in hanging) == 20
    started = time.monotonic()
    assert (await hooks.client("allow", "/a").invoke(p.PUBLISH_STREAM, PUBLISH)).allowed
    assert time.monotonic() - started < 0.5
    backend.release.set()
    for _ in range(100):
        if hooks.stats.events_posted[("hang", "StreamStatusEvent")] == 40:
            break
        await asyncio.sleep(0.05)
    assert hooks.stats.events_posted[("hang", "StreamStatusEvent")] == 40


async def test_close_flushes_queued_events_then_refuses_new_ones(backend, make_hooks) -> None:
    hooks = make_hooks(["allow"])
    client = hooks.client("allow", "/s")
    client.event(p.STREAM_STATUS_EVENT, {**PUBLISH, "status": "PUBLISHING"})
    client.event(p.CONNECTION_STATUS_EVENT, {"status": "DISCONNECTED"})
    client.close()
    assert not client.event(p.STREAM_STATUS_EVENT, PUBLISH)
    for _ in range(100):
        if len(backend.requests) == 2:
            break
        await asyncio.sleep(0.02)
    assert backend.methods("allow") == ["StreamStatusEvent", "ConnectionStatusEvent"]  # in order
    assert hooks.stats.events_dropped[("allow", "StreamStatusEvent")] == 1


async def test_keep_alive_403_terminates(make_hooks) -> None:
    hooks = make_hooks(["keepalive", "allow"])
    assert await hooks.client("allow", "/s").keep_alive(PUBLISH)
    client = hooks.client("keepalive", "/s")
    reasons: list[str] = []
    await asyncio.wait_for(keep_alive_loop(client, 0.05, lambda: PUBLISH, reasons.append), 2)
    assert reasons == ["Terminated by keep-alive"] and hooks.stats.keep_alive_terminations == 1
