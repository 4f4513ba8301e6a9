"""The cluster's figures for the README (`make cluster-figures`, not part of `make test`).

1. The relay's cost per relayed packet on each side, in this process, on the relay layer alone (what a stream
   crossing nodes adds to one crossing workers): the origin's send (seal + sendto) and the edge's receive
   (open + checks + dispatch), sealed (cluster/sealed.py) against plain (workers/relay.py), 1,200-byte packets.
2. Time to first frame of an aiortc player on an edge node: cold (the stream is not on that node yet: the pull
   request through Redis, the relay set up, the origin's GOP) against warm (already relayed there), and a player
   on the origin itself for reference; p50/p95 over --trials streams. A real redis-server and two webcall nodes
   as processes on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import peers  # noqa: E402
from tests.support.cluster import RedisServer, start_node  # noqa: E402
from webcall.cluster.sealed import DOWN, HEADER, SealedRelay, _Box, new_key  # noqa: E402
from webcall.workers.relay import RelayEndpoint, encode_media  # noqa: E402


def rtp(seq: int) -> bytes:
    return bytes([0x80, 96]) + (seq & 0xFFFF).to_bytes(2, "big") + b"\0" * 8 + b"v" * 1188


async def relay_cost(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    # The datagrams go to a plain socket nobody reads (the kernel drops what its buffer cannot hold): only the
    # sending side is timed.
    sink_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink_sock.bind(("127.0.0.1", 0))
    sink = sink_sock.getsockname()
    plain = await RelayEndpoint.bind("127.0.0.1", 0)
    sealed = await SealedRelay.bind("127.0.0.1", 0)
    packets = [rtp(i) for i in range(n)]
    try:
        sender = plain.sender(sink, 1)
        t = time.perf_counter_ns()
        for p in packets:
            sender.send(0, p)
        out["origin_plain_us"] = (time.perf_counter_ns() - t) / n / 1000
        link = sealed.offer(sink, 1, new_key(), new_key())
        sender = sealed.sealed_sender(link)
        t = time.perf_counter_ns()
        for p in packets:
            sender.send(0, p)
        out["origin_sealed_us"] = (time.perf_counter_ns() - t) / n / 1000

        got = []
        receiver = RelayEndpoint(on_packet=lambda s, tr, p: got.append(1))
        receiver.subscribe(1, ("127.0.0.1", 9))
        datagrams = [encode_media(1, 0, p) for p in packets]
        t = time.perf_counter_ns()
        for d in datagrams:
            receiver.datagram_received(d, ("127.0.0.1", 9))
        out["edge_plain_us"] = (time.perf_counter_ns() - t) / n / 1000
        down, up = new_key(), new_key()
        edge = SealedRelay(on_packet=lambda s, tr, p: got.append(1))
        edge.pull(1, ("127.0.0.1", 9), down, up)
        box = _Box(down)
        datagrams = [box.seal(HEADER.pack(0x5A, 1, 0, DOWN, 1), p) for p in packets]
        t = time.perf_counter_ns()
        for d in datagrams:
            edge.datagram_received(d, ("127.0.0.1", 9))
        out["edge_sealed_us"] = (time.perf_counter_ns() - t) / n / 1000
        assert len(got) == 2 * n, len(got)
    finally:
        for e in (plain, sealed):
            e.close()
        sink_sock.close()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def first_frames(trials: int) -> dict[str, list[float]]:
    redis = RedisServer()
    await redis.start()
    tmp = Path(tempfile.mkdtemp(prefix="cluster-figures-"))
    a, b = await asyncio.gather(start_node("A", redis.url, tmp, "--log-level", "warning"),
                                start_node("B", redis.url, tmp, "--log-level", "warning"))
    times: dict[str, list[float]] = {"origin": [], "edge_cold": [], "edge_warm": []}
    try:
        for i in range(trials):
            clients = [await a.client(), await a.client(), await b.client(), await b.client()]
            pub = await peers.publish(clients[0], f"ttff-{i}", width=640, height=480)
            await pub.wait_status("PUBLISHING", 10)
            await asyncio.sleep(1.0)
            streams = [pub]
            for key, client in (("origin", clients[1]), ("edge_cold", clients[2]), ("edge_warm", clients[3])):
                player = await peers.play(client, f"ttff-{i}")
                streams.append(player)
                await player.wait_decoded_frames(1, timeout=15)
                times[key].append(player.time_to_first_frame)  # type: ignore[arg-type]
            for s in streams:
                await s.close()
            for c in clients:
                await c.close()
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await redis.stop()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    cost = await relay_cost(args.packets)
    print(f"relay cost per packet ({args.packets} x 1200 B, µs): " + ", ".join(f"{k}={v:.2f}" for k, v in cost.items()))
    times = await first_frames(args.trials)
    for key, values in times.items():
        print(f"time to first frame {key:10s} n={len(values)} p50={pct(values, 0.5) * 1000:.0f} ms "
              f"p95={pct(values, 0.95) * 1000:.0f} ms mean={statistics.mean(values) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
