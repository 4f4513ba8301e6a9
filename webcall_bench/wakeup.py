"""What one wake-up of an event loop costs: CPU per datagram of a receiver that does nothing with it.

A publisher's packets arrive one at a time, 134 a second at the bench's default stream, and each one wakes the
server's event loop. On a quiet multi-tenant VM that wake-up is dear (cold caches, an idle vCPU), and it is paid
whatever the server then does with the packet; this measures it alone, for each event loop the server can run
(webcall/eventloop.py), so the bench's fixed cost per publisher packet can be read against it:

    python -m webcall_bench.wakeup --rates 134,1000,5000 --seconds 8

A child process pinned to one CPU sends 1100-byte datagrams at the rate to 127.0.0.1; the receiver, pinned to
another, counts them in `datagram_received` and reports its thread's CPU time (`time.thread_time`) per datagram
over the run, the first second left out. The loops alternate, `--rounds` times; each line is one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import time

from webcall import eventloop

PAYLOAD = b"\x80" * 1100
WARMUP = 1.0  # seconds before the CPU time is taken


def _send(port: int, rate: float, seconds: float, cpu: int | None) -> None:
    """The child: `rate` datagrams a second for `seconds`, on its own schedule (no drift)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        sock.sendto(PAYLOAD, ("127.0.0.1", port))
        sent += 1
        pause = start + sent / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


async def _receive(rate: float, seconds: float, cpus: tuple[int, int] | None) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    received = [0]

    class Counter(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received[0] += 1

    transport, _ = await loop.create_datagram_endpoint(Counter, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    child = os.fork()
    if child == 0:
        try:
            _send(port, rate, seconds, cpus[0] if cpus else None)
        finally:
            os._exit(0)
    try:
        if cpus:
            os.sched_setaffinity(0, {cpus[1]})
        await asyncio.sleep(WARMUP)
        cpu0, count0 = time.thread_time(), received[0]
        await asyncio.sleep(seconds - WARMUP - 0.5)  # stop before the sender does
        cpu1, count1 = time.thread_time(), received[0]
    finally:
        await loop.run_in_executor(None, os.waitpid, child, 0)
        transport.close()
    packets = count1 - count0
    return {"loop": eventloop.loop_name(), "rate": rate, "packets": packets,
            "us_cpu_per_datagram": round((cpu1 - cpu0) * 1e6 / packets, 1) if packets else None}


def measure(loop: str, rate: float, seconds: float, pin: bool = True) -> dict[str, float]:
    cpus = None
    if pin and hasattr(os, "sched_getaffinity") and len(allowed := sorted(os.sched_getaffinity(0))) >= 2:
        cpus = (allowed[0], allowed[1])
    affinity = os.sched_getaffinity(0) if cpus else None
    try:
        return eventloop.run(_receive(rate, seconds, cpus), loop)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m webcall_bench.wakeup", description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="134,1000,5000", help="datagrams a second, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each loop at each rate, alternating")
    parser.add_argument("--loops", default=",".join(eventloop.LOOPS))
    parser.add_argument("--no-pin", action="store_true", help="leave both processes where the kernel puts them")
    args = parser.parse_args(argv)
    for rate in (float(r) for r in args.rates.split(",")):
        for _ in range(args.rounds):
            for loop in args.loops.split(","):
                print(json.dumps(measure(loop, rate, args.seconds, pin=not args.no_pin)), flush=True)


if __name__ == "__main__":
    main()
