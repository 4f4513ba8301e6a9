"""What relaying costs per packet: `python -m webcall.workers.relay_bench [--packets 100000] [--size 1200]`.

Two real processes on 127.0.0.1: this one sends through a `RelaySender`, a child (`--receive`) receives through
a `RelayEndpoint` into a no-op `on_packet`. Each side measures its own CPU time (time.process_time) over the
run and prints µs per packet; the sender paces itself in bursts so the receiver's socket buffer does not
overflow (a drop would make the receiver look cheaper than it is). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time
from pathlib import Path

from .relay import RelayEndpoint

STREAM = 7


def rtp_packet(seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, 0xCAFE) + bytes(size - 12)


async def receive(source_port: int, packets: int) -> dict[str, float]:
    done = asyncio.Event()
    marks: list[float] = []
    count = 0

    def on_packet(stream_id: int, track: int, packet: bytes) -> None:
        nonlocal count
        count += 1
        if count == 1:
            marks.extend((time.process_time(), time.perf_counter()))
        if count == packets:
            done.set()

    ep = await RelayEndpoint.bind(on_packet=on_packet)
    ep.subscribe(STREAM, ("127.0.0.1", source_port))
    print(ep.address[1], flush=True)
    idle = 0
    while not done.is_set() and idle < (1 if count else 10):  # stop when nothing has come for a second (drops)
        before = count
        try:
            await asyncio.wait_for(done.wait(), 1.0)
        except TimeoutError:
            idle = idle + 1 if count == before else 0
    if not marks:
        return {"received": 0}
    cpu, wall = time.process_time() - marks[0], time.perf_counter() - marks[1]
    return {"received": count, "rx_us_per_packet": 1e6 * cpu / max(count - 1, 1), "rx_wall_s": wall,
            "malformed": ep.stats.malformed}


async def send(packets: int, size: int, burst: int) -> dict[str, float]:
    ep = await RelayEndpoint.bind()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall.workers.relay_bench", "--receive", "--source-port", str(ep.address[1]),
        "--packets", str(packets), stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    port = int(await proc.stdout.readline())
    sender = ep.sender(("127.0.0.1", port), STREAM)
    payloads = [rtp_packet(i, size) for i in range(256)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    cpu_sending = 0.0
    for start in range(0, packets, burst):
        t = time.process_time()
        for i in range(start, min(start + burst, packets)):
            sender.send(0, payloads[i & 255])
        cpu_sending += time.process_time() - t
        await asyncio.sleep(0.0005)
    result = {"packets": packets, "size": size, "tx_us_per_packet": 1e6 * cpu_sending / packets,
              "tx_us_per_packet_with_loop": 1e6 * (time.process_time() - cpu0) / packets,
              "tx_wall_s": time.perf_counter() - wall0, "send_dropped": ep.stats.send_dropped}
    out, _ = await proc.communicate()
    result.update(json.loads(out))
    ep.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webcall.workers.relay_bench")
    p.add_argument("--packets", type=int, default=100_000)
    p.add_argument("--size", type=int, default=1200, help="RTP packet size in bytes (≥ 12)")
    p.add_argument("--burst", type=int, default=64, help="packets sent back to back between loop turns")
    p.add_argument("--receive", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--source-port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.receive:
        print(json.dumps(asyncio.run(receive(args.source_port, args.packets))))
    else:
        print(json.dumps(asyncio.run(send(args.packets, max(args.size, 12), args.burst))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
