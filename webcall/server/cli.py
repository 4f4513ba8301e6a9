"""`webcall` / `python -m webcall`: run the server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

from ..logs import configure
from .app import WebcallServer
from .config import parse_args


async def _serve(server: WebcallServer) -> None:
    await server.start()
    # Everything loaded at start-up lives as long as the process: keep it out of the collector's scans,
    # whose full passes otherwise pause forwarding for tens of milliseconds under load.
    gc.collect()
    gc.freeze()
    # And a full pass over what is left (nearly nothing): it resets the collector's count of long-lived objects,
    # which the pass above left at everything loaded at start-up (a full pass runs once a quarter of that count
    # has survived since). Closed sessions sit in reference cycles until a full pass; in a 200-cycle soak this
    # gave 3 full passes instead of 2 — a small effect: the memory those cycles held is now freed at close
    # (media/dtls.py release), which is what bounded the growth.
    gc.collect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rest = f", REST http://{server.config.rest_host}:{server.rest_port}/rest-api/" if server.rest_port else ""
    print(f"webcall: open http://localhost:{server.http_port}/  (signalling ws://<host>:{server.http_port}, "
          f"media udp/{server.media_port}{rest})", flush=True)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["bench"]:  # `webcall bench ...`: the load generator (webcall/bench/)
        from ..bench.cli import main as bench_main

        sys.exit(bench_main(args[1:]))
    config = parse_args(argv)
    configure(config.log_level)
    asyncio.run(_serve(WebcallServer(config)))
