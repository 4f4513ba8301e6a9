"""WHIP/WHEP authorization and ICE servers (webcall/whip/http.py): static token lists, the hook backend's
connect and publishStream/playStream decisions with the Bearer token, 401/403 per RFC 6750 §3.1, and the
`Link: rel="ice-server"` headers of RFC 9725 §4.4. Real aiortc peers; what plays is checked on decoded frames.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from tests.support import peers
from tests.support.hook_backend import HookBackend
from tests.support.whip_client import WhipError, whep_play, whip_publish
from webcall.hooks import policy as p


def http_base(server) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


async def raw_post(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, aiohttp.ClientResponse,
                                                                                          str]:
    """POST a real aiortc offer; returns (status, response, body). The peer is closed: only HTTP matters here."""
    pc = peers.create_peer_connection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    async with aiohttp.ClientSession() as http:
        async with http.post(base + path, data=offer.encode(),
                             headers={"Content-Type": "application/sdp", **(headers or {})}) as r:
            return r.status, r, await r.text()


async def test_no_ice_server_links_by_default_and_the_configured_ones(make_server) -> None:
    server = await make_server()
    base = http_base(server)
    status, r, _ = await raw_post(base, "/whip/nolinks")
    assert status == 201 and r.headers.getall("Link", []) == []
    async with aiohttp.ClientSession() as http:
        async with http.delete(base + r.headers["Location"]) as d:
            assert d.status == 200

    server = await make_server(whip_ice_servers="stun:stun.example.org:3478, "
                                                "turn:turn.example.org:3478?transport=udp alice pw1")
    base = http_base(server)
    status, r, _ = await raw_post(base, "/whip/links")
    assert status == 201
    assert r.headers.getall("Link") == [
        '<stun:stun.example.org:3478>; rel="ice-server"',
        '<turn:turn.example.org:3478?transport=udp>; rel="ice-server"; username="alice"; credential="pw1"; '
        'credential-type="password"']
    assert "Link" in r.headers["Access-Control-Expose-Headers"]  # a web page may read them
    async with aiohttp.ClientSession() as http:
        async with http.options(base + "/whep/links") as o:
            assert o.status == 204 and len(o.headers.getall("Link")) == 2
        async with http.delete(base + r.headers["Location"]) as d:
            assert d.status == 200
    await server.wait_empty()


def test_bad_ice_server_config_is_refused() -> None:
    from webcall.server.config import Config
    for bad in ("http://x", "turn:x user", "turn:x a b c"):
        with pytest.raises(ValueError):
            Config(whip_ice_servers=bad).validate()
    Config(whip_ice_servers="stun:a:3478, turns:b:5349?transport=tcp u p").validate()


async def test_static_token_list_401s(make_server) -> None:
    server = await make_server(whip_token="first, second")
    base = http_base(server)
    status, r, _ = await raw_post(base, "/whip/tokens")
    assert status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="webcall"'
    status, r, _ = await raw_post(base, "/whip/tokens", {"Authorization": "Bearer third"})
    assert status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert server.hub.registry.names() == set()  # nothing was touched
    pub = await whip_publish(base, "tokens", token="second")
    player = await whep_play(base, "tokens", token="first")
    await player.wait_decoded_frames(5, timeout=15)
    for resource in (player, pub):
        assert await resource.delete() == 200
        await resource.close()
    await server.wait_empty()


class Backend(HookBackend):
    """connect: only authToken "good" (and "viewer"); publishStream: never "forbidden"; playStream: not for "viewer"
    on "members-only"."""

    async def answer(self, app: str, method: str, body: dict, raw: bytes, request: web.Request) -> web.StreamResponse:
        if method == p.CONNECT:
            if body.get("authToken") in ("good", "viewer"):
                return web.json_response(body)
            return web.json_response({"message": "Unknown token"}, status=403)
        if method == p.PUBLISH_STREAM and body.get("name") == "forbidden":
            return web.json_response({"message": "Not your channel"}, status=403)
        if method == p.PLAY_STREAM and body.get("name") == "members-only" and body.get("authToken") == "viewer":
            return web.json_response({"message": "Members only"}, status=403)
        return web.json_response(body)

    def bodies(self, method: str) -> list[dict]:
        return [b for _, m, b, _ in self.requests if m == method]


@pytest.fixture
async def backend():
    b = Backend()
    await b.start()
    yield b
    await b.stop()


async def test_bearer_token_goes_to_the_hooks(make_server, backend) -> None:
    server = await make_server(hook_url=backend.url("whipapp"))
    base = http_base(server)
    async with aiohttp.ClientSession() as http:  # bad input is refused before the backend is asked anything
        async with http.post(base + "/whip/cam", data="v=0", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
    assert backend.requests == []

    status, r, text = await raw_post(base, "/whip/cam")  # no token: the backend's connect says no → 401
    assert status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="webcall"' and text == "Unknown token"
    status, r, _ = await raw_post(base, "/whip/cam", {"Authorization": "Bearer bad"})
    assert status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    status, r, text = await raw_post(base, "/whip/forbidden", {"Authorization": "Bearer good"})
    assert status == 403 and text == "Not your channel"  # known client, action refused
    assert server.hub.registry.names() == set()

    connects = backend.bodies(p.CONNECT)
    assert [c.get("authToken") for c in connects] == [None, "bad", "good"]
    assert connects[-1]["appKey"] == "defaultApp" and connects[-1]["mediaProviders"] == ["WHIP"]
    assert backend.bodies(p.PUBLISH_STREAM)[-1]["name"] == "forbidden"

    pub = await whip_publish(base, "members-only", token="good")
    published = backend.bodies(p.PUBLISH_STREAM)[-1]
    assert published["name"] == "members-only" and published["mediaProvider"] == "WHIP"
    assert published["authToken"] == "good" and published["custom"] == {"token": "good"}
    with pytest.raises(WhipError) as refused:
        await whep_play(base, "members-only", token="viewer")
    assert refused.value.status == 403 and refused.value.text == "Members only"
    player = await whep_play(base, "members-only", token="good")
    assert backend.bodies(p.PLAY_STREAM)[-1]["mediaProvider"] == "WHEP"
    await player.wait_decoded_frames(5, timeout=15)
    for resource in (player, pub):
        assert await resource.delete() == 200
        await resource.close()
    await server.wait_empty()


async def test_one_namespace_and_huge_bodies(make_server) -> None:
    """A WCS publish of a WHIP-held name is FAILED as WCS says it; a huge offer is a 413 and touches nothing."""
    server = await make_server()
    base = http_base(server)
    pub = await whip_publish(base, "held")
    client = await server.client()
    with pytest.raises(peers.StreamFailed) as failed:
        await peers.publish(client, "held")
    assert failed.value.status == "FAILED" and failed.value.info == "Stream name is already in use"
    async with aiohttp.ClientSession() as http:
        huge = b"v=0\r\n" + b"a=x-padding:" + b"0" * (1024 * 1024) + b"\r\n"
        for path in ("/whip/huge", "/whep/held"):
            async with http.post(base + path, data=huge, headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 413, path
        async with http.delete(base + "/whep/held/not-a-session") as r:
            assert r.status == 404
    assert server.hub.registry.names() == {"held"} and len(server.hub.streams()) == 1
    player = await whep_play(base, "held")  # the stream went on
    await player.wait_decoded_frames(5, timeout=15)
    for resource in (player, pub):
        assert await resource.delete() == 200
        await resource.close()
    await client.close()
    await server.wait_empty()
