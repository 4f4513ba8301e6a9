"""Everything a client owned is released when it leaves, however it leaves."""

from __future__ import annotations

import asyncio

from tests.support import peers
from tests.support.lossy import LossyRelay


def server_tasks() -> set[asyncio.Task]:
    """A session's tasks: the close of its socket when the server ends it (no writer task: frames are written
    straight to the connection, server/wsout.py; no pinger either: one timer pings every session, wcs/keepalive.py)."""
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("ws-close ")}


async def test_abrupt_departures_leave_nothing(server) -> None:
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "gone")
    await publisher.wait_status("PUBLISHING", timeout=10)
    clients = [await server.client() for _ in range(3)]
    players = [await peers.play(c, "gone") for c in clients]
    await asyncio.gather(*(p.wait_frames(3, timeout=10) for p in players))
    assert len(server.hub.keepalive) == 4  # every session is pinged

    await players[0].close()  # peer connection closed, no stopStream: DTLS close_notify ends it
    msg = await players[0].wait_status("STOPPED", timeout=5)
    await clients[1].close()  # WebSocket gone, peer connection still up
    await pub_client.close()  # publisher's WebSocket gone: remaining players are told
    msg = await players[2].wait_status("STOPPED", timeout=5)
    assert msg["data"][0]["info"] == "Stopped by session disconnect"

    for p in [publisher, *players]:
        await p.close()
    for c in clients:
        await c.close()
    await server.wait_empty()
    for _ in range(50):
        if not server_tasks():
            break
        await asyncio.sleep(0.05)
    assert server_tasks() == set()
    assert len(server.hub.keepalive) == 0  # and none is pinged any more


async def test_vanished_player_fails_by_consent(make_server) -> None:
    server = await make_server(consent_timeout=7.0)
    relay = LossyRelay(("127.0.0.1", server.server.media_port), 0.0)
    relay_port = await relay.start()
    try:
        pub_client = await server.client()
        publisher = await peers.publish(pub_client, "consent")
        await publisher.wait_status("PUBLISHING", timeout=10)
        server.hub.plane.candidates = (("127.0.0.1", relay_port),)  # only the player goes through it
        client = await server.client()
        player = await peers.play(client, "consent")
        await player.wait_frames(3, timeout=10)
        relay.blackhole = True  # the player's network is gone; nothing tells the server
        msg = await player.wait_status("FAILED", timeout=10)
        assert msg["data"][0]["info"] == "Failed by ICE keep alive"
        assert server.hub.registry.find("consent").players == []
        await player.close()
        await publisher.stop()
        await pub_client.close()
        await client.close()
        await server.wait_empty()
    finally:
        relay.close()
