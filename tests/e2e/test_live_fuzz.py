"""Live fuzz: while one healthy stream plays (aiortc publisher → server → aiortc player decoding frames), mutated
real SDK messages arrive over many WebSocket sessions, and garbage or truncated real datagrams hit the media port
from new addresses and from the healthy peers' own sockets.

The healthy player must never go more than MAX_GAP without a decoded frame, both peers keep their status, and
the server logs no ERROR (drops are counted, not logged) and contains no exception at the media port.

In `make test` this is a short seeded run (MUTATIONS, UDP_SECONDS); `make fuzz-live` runs it long, with a random
seed, and prints the counts: WEBCALL_LIVE_FUZZ_MUTATIONS, WEBCALL_LIVE_FUZZ_UDP_SECONDS, WEBCALL_LIVE_FUZZ_SEED.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

import pytest

from tests.support import hostile, peers
from tests.support.livefuzz import Mutator, UdpFuzzer, WsFuzzer, load_messages
from webcall_bench.signalling import connection_payload

LIVE = "live"
MUTATIONS = int(os.environ.get("WEBCALL_LIVE_FUZZ_MUTATIONS", "300"))
UDP_SECONDS = float(os.environ.get("WEBCALL_LIVE_FUZZ_UDP_SECONDS", "2"))
SEED = int(os.environ.get("WEBCALL_LIVE_FUZZ_SEED", "20261202"))
MAX_GAP = 0.5  # seconds without a decoded frame on the healthy stream


def _gaps(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start - MAX_GAP <= t <= end]
    if not inside:
        return float("inf")
    edges = [start] + inside + [end]
    return max(b - a for a, b in zip(edges, edges[1:]))


async def test_live_fuzz(make_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="webcall")
    server = await make_server(connect_timeout=2.0, max_message_size=256 * 1024)
    port = server.port
    real: list[bytes] = []
    receive = port.datagram_received

    def tap(data: bytes, addr) -> None:  # keep copies of real datagrams (the healthy peers' packets)
        if len(real) < 400 and addr in port.by_addr:
            real.append(bytes(data))
        receive(data, addr)

    port.datagram_received = tap
    pub_client = await server.client()
    play_client = await server.client()
    publisher = player = None
    try:
        publisher = await peers.publish(pub_client, LIVE, width=320, height=240, fps=15)
        await publisher.wait_status("PUBLISHING", timeout=10)
        publication = server.hub.registry.find(LIVE)
        player = await peers.play(play_client, LIVE)
        await player.wait_status("PLAYING", timeout=10)
        await player.wait_decoded_frames(10, timeout=10)
        peer_sockets = [hostile.peer_socket(publisher.pc)[0], hostile.peer_socket(player.pc)[0]]
        live_addrs = set(port.by_addr)

        mutator = Mutator(SEED, load_messages(), [LIVE, "live2", "fuzz"])
        ws = WsFuzzer(server.url, mutator, connection_payload())
        udp = UdpFuzzer(SEED + 1, port.sock.getsockname()[:2], real, peer_sockets)
        started = time.monotonic()
        ws_counts, udp_counts = await asyncio.gather(ws.run(MUTATIONS), udp.run(UDP_SECONDS))
        ended = time.monotonic()
        await player.wait_decoded_frames(10, since=len(player.frames), timeout=5)

        gap = _gaps([f.t for f in player.frames], started, ended)
        print(f"\nlive fuzz seed={SEED}: {ended - started:.1f} s, {len(player.frames)} frames decoded, "
              f"largest gap {gap * 1000:.0f} ms")
        print("  websocket:", dict(sorted(ws_counts.items())))
        print("  mutations:", dict(sorted(mutator.kinds.items())))
        print("  udp:", dict(sorted(udp_counts.items())), f"port dropped={port.dropped} errors={port.errors}")
        assert ws_counts["mutations"] == MUTATIONS, ws_counts
        assert gap <= MAX_GAP, f"healthy stream had a {gap:.2f} s gap without a decoded frame"
        assert server.hub.registry.find(LIVE) is publication
        assert publisher.status == "PUBLISHING" and player.status == "PLAYING", (publisher.statuses, player.statuses)
        assert live_addrs <= set(port.by_addr), "a healthy peer's address was unbound"
        errors = [r for r in caplog.get_records("call") if r.name.startswith("webcall") and r.levelno >= logging.ERROR]
        assert not errors, "server logged errors:\n" + "\n".join(f"{r.name}: {r.getMessage()}" for r in errors[:20])
        assert port.errors == 0, f"media port contained {port.errors} exceptions"

        await player.stop()
        await player.wait_status("STOPPED", timeout=5)
        await publisher.stop()
        await publisher.wait_status("UNPUBLISHED", timeout=5)
        await pub_client.close()
        await play_client.close()
        await server.wait_empty(timeout=10)
    finally:
        for stream in (player, publisher):
            if stream is not None:
                await stream.close()
        await pub_client.close()
        await play_client.close()


@pytest.fixture(autouse=True)
def _random_seed_note() -> None:
    random.seed(SEED)
