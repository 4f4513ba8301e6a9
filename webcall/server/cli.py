"""`webcall` / `python -m webcall`: run the server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import importlib
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rest = f", REST http://{server.config.rest_host}:{server.rest_port}/rest-api/" if server.rest_port else ""
    print(f"webcall: open http://localhost:{server.http_port}/  (signalling ws://<host>:{server.http_port}, "
          f"media udp/{server.media_port}{rest})", flush=True)
    await stop.wait()
    await server.stop()


def _bench(args: list[str]) -> int:
    """Run `webcall_bench.cli.main`. The load generator is not part of the server's import graph: it is found at
    run time, and its absence (or that of what only it needs: numpy, matplotlib) is a clear error, not a traceback."""
    try:
        bench = importlib.import_module("webcall_bench.cli")
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        what = ("the load generator (package webcall_bench) is not installed" if missing.startswith("webcall_bench")
                else f"the load generator needs {missing!r}, which is not installed")
        print(f"webcall bench: {what}; install it with `pip install -e '.[bench]'` or "
              f"`pip install -r requirements-dev.txt` (make bench does), from a checkout of webcall", file=sys.stderr)
        return 2
    return bench.main(args)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["bench"]:  # `webcall bench ...`: the load generator, a package of its own (webcall_bench/)
        sys.exit(_bench(args[1:]))
    config = parse_args(argv)
    configure(config.log_level)
    asyncio.run(_serve(WebcallServer(config)))
