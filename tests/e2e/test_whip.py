"""WHIP ingest and WHEP playback (webcall/whip/) with aiortc peers: real ICE, DTLS, SRTP, decoded frames.

Also: WHIP and WCS clients playing each other's streams through the stream core, GStreamer-style bundle-only
offers over both front ends, and the WCS WebSocket on any path.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from tests.support import peers, sdpmunge
from tests.support.wcs_client import WcsClient
from tests.support.whip_client import WhipError, whep_play, whip_publish

FRAMES = 20


@pytest.fixture
async def server(server_shapes):
    """The media tests run against one process and against two media workers (conftest.SHAPES)."""
    return server_shapes


def http_base(server) -> str:
    return f"http://127.0.0.1:{server.server.http_port}"


async def assert_plays(player: peers.Player, frames: int = FRAMES) -> None:
    await player.wait_decoded_frames(frames, timeout=15)
    await player.wait_audio_frames(20, timeout=10)
    counters = player.counters
    assert len(counters) >= frames * 0.9
    assert all(b > a for a, b in zip(counters, counters[1:])), "counter must strictly increase"
    assert not any(f.is_black for f in player.frames)


async def test_whip_publish_whep_play(server) -> None:
    base = http_base(server)
    pub = await whip_publish(base, "whip live")
    assert pub.location.startswith("/whip/whip%20live/")
    assert pub.response_headers["Access-Control-Allow-Origin"] == "*"
    player = await whep_play(base, "whip live")
    assert player.location.startswith("/whep/whip%20live/")
    await assert_plays(player)
    whip = [s for s in server.hub.registry.sources() if s.name == "whip live"]
    assert whip and whip[0].live and (whip[0].width, whip[0].height) == (640, 480)
    assert await player.delete() == 200
    assert await player.delete() == 404
    assert await pub.delete() == 200
    await player.close()
    await pub.close()
    await server.wait_empty()


async def test_whip_publish_played_by_wcs_client(server) -> None:
    base = http_base(server)
    pub = await whip_publish(base, "from-whip", video_codec="H264")
    client = await server.client()
    player = await peers.play(client, "from-whip")
    await player.wait_status("PLAYING", timeout=10)
    await assert_plays(player)
    assert await pub.delete() == 200  # the WCS player hears that the source ended
    msg = await player.wait_status("STOPPED", timeout=5)
    assert peers.message_payload(msg)["info"] == "Stopped by publisher stop"
    await player.close()
    await pub.close()
    await client.close()
    await server.wait_empty()


async def test_wcs_publish_played_by_whep(server) -> None:
    client = await server.client()
    publisher = await peers.publish(client, "from-wcs")
    await publisher.wait_status("PUBLISHING", timeout=10)
    player = await whep_play(http_base(server), "from-wcs")
    await assert_plays(player)
    await publisher.stop()  # the WHEP playback ends with its source
    deadline = asyncio.get_running_loop().time() + 5
    while server.hub.registry.readers_count():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert await player.delete() == 404
    await player.close()
    await client.close()
    await server.wait_empty()


async def test_bundle_only_offers_over_whip_whep_and_wcs(server) -> None:
    """Offers written the way GStreamer max-bundle writes them: every section after the first port 0 +
    a=bundle-only. Accepted over WHIP, WHEP and the WCS WebSocket, with media both ways."""
    base = http_base(server)
    pub = await whip_publish(base, "gst-style", offer_transform=sdpmunge.max_bundle)
    assert "a=bundle-only" in pub.offer
    player = await whep_play(base, "gst-style", offer_transform=sdpmunge.max_bundle)
    await assert_plays(player)
    client = await server.client()
    wcs_pub = await peers.publish(client, "gst-style-wcs", offer_transform=sdpmunge.max_bundle)
    await wcs_pub.wait_status("PUBLISHING", timeout=10)
    wcs_player = await peers.play(client, "gst-style-wcs", offer_transform=sdpmunge.max_bundle)
    await assert_plays(wcs_player)
    for p in (wcs_player, wcs_pub):
        await p.stop()
    for r in (player, pub):
        assert await r.delete() == 200
        await r.close()
    await client.close()
    await server.wait_empty()


# --- HTTP behaviour (one process is enough) -----------------------------------------------------------


async def test_whip_http_errors(make_server) -> None:
    server = await make_server()
    base = http_base(server)
    async with aiohttp.ClientSession() as http:
        async with http.options(f"{base}/whip/x", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"}) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            assert "Location" in r.headers["Access-Control-Expose-Headers"]
        async with http.post(f"{base}/whip/x", data="v=0", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.post(f"{base}/whip/x", data="hello", headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 400 and (await r.text()).startswith("Bad SDP")
        async with http.delete(f"{base}/whip/x/nope") as r:
            assert r.status == 404
    with pytest.raises(WhipError) as err:
        await whep_play(base, "nothing")
    assert err.value.status == 404
    # The name is taken by a WCS publisher: 409
    client = await server.client()
    publisher = await peers.publish(client, "taken")
    with pytest.raises(WhipError) as err:
        await whip_publish(base, "taken")
    assert err.value.status == 409
    # Trickle ICE: candidates accepted and ignored (ICE-lite), an ICE restart refused
    pub = await whip_publish(base, "trickle")
    async with aiohttp.ClientSession() as http:
        frag = "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n" \
               "a=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host\r\n"
        ufrag = next(line.split(":", 1)[1] for line in pub.offer.splitlines() if line.startswith("a=ice-ufrag:"))
        pwd = next(line.split(":", 1)[1] for line in pub.offer.splitlines() if line.startswith("a=ice-pwd:"))
        headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
        async with http.patch(base + pub.location, data=frag.format(ufrag, pwd), headers=headers) as r:
            assert r.status == 204
        async with http.patch(base + pub.location, data=frag.format("new", "newpassword0123456789"),
                              headers=headers) as r:
            assert r.status == 422
    assert await pub.delete() == 200
    await pub.close()
    await publisher.stop()
    await client.close()
    await server.wait_empty()


async def test_whip_bearer_token(make_server) -> None:
    server = await make_server(whip_token="s3cret")
    base = http_base(server)
    for token in (None, "wrong"):
        with pytest.raises(WhipError) as err:
            await whip_publish(base, "guarded", token=token)
        assert err.value.status == 401
    pub = await whip_publish(base, "guarded", token="s3cret")
    with pytest.raises(WhipError) as err:
        await whep_play(base, "guarded")
    assert err.value.status == 401
    player = await whep_play(base, "guarded", token="s3cret")
    await player.wait_decoded_frames(5, timeout=15)
    async with aiohttp.ClientSession() as http:
        async with http.delete(base + pub.location) as r:
            assert r.status == 401
    for r in (player, pub):
        assert await r.delete() == 200
        await r.close()
    await server.wait_empty()


# --- the WCS WebSocket on any path ------------------------------------------------------------------


async def test_websocket_on_any_path(make_server, tmp_path) -> None:
    server = await make_server(tls_port=0, tls_dir=str(tmp_path))
    port, tls_port = server.server.http_port, server.server.tls_port
    client = await WcsClient.connect(f"ws://127.0.0.1:{port}/somestream")
    publisher = await peers.publish(client, "somestream")
    await publisher.wait_status("PUBLISHING", timeout=10)
    context = ssl.create_default_context(cafile=str(tmp_path / "webcall-selfsigned.crt"))
    context.check_hostname = False
    wss = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
    tls_client = await WcsClient.connect(f"wss://127.0.0.1:{tls_port}/some/deeper/path", session=wss)
    player = await peers.play(tls_client, "somestream")
    await player.wait_decoded_frames(5, timeout=15)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/somestream") as r:
            assert r.status == 404  # a plain GET is still not a page
        async with http.get(f"http://127.0.0.1:{port}/health") as r:
            assert r.status == 200  # HTTP routes are HTTP routes
    await player.stop()
    await publisher.stop()
    await tls_client.close()
    await wss.close()
    await client.close()
    await server.wait_empty()


async def test_whip_and_whep_streams_in_rest_find_all(make_server) -> None:
    server = await make_server()
    base = http_base(server)
    pub = await whip_publish(base, "listed")
    player = await whep_play(base, "listed")
    client = await server.client()
    wcs_player = await peers.play(client, "listed")
    await player.wait_decoded_frames(5, timeout=15)
    await wcs_player.wait_decoded_frames(5, timeout=15)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.rest_url}/rest-api/stream/find_all") as r:
            streams = await r.json()
        listed = {(s["mediaProvider"], s["published"]) for s in streams if s["name"] == "listed"}
        assert listed == {("WHIP", True), ("WHEP", False), ("WebRTC", False)}, streams
        whip = next(s for s in streams if s["mediaProvider"] == "WHIP")
        assert whip["status"] == "PUBLISHING" and whip["videoCodec"] == "VP8" and whip["audioCodec"] == "opus"
        async with http.get(f"{server.rest_url}/metrics") as r:
            assert r.status == 200
        async with http.post(f"{server.rest_url}/rest-api/stream/terminate",
                             json={"mediaSessionId": whip["mediaSessionId"]}) as r:
            assert r.status == 200
    await wcs_player.wait_status("STOPPED", timeout=5)  # the source ended: its players with it
    assert await pub.delete() == 404 and await player.delete() == 404
    for p in (wcs_player, player, pub):
        await p.close()
    await client.close()
    await server.wait_empty()
