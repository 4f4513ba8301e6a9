"""`webcall` / `python -m webcall`: run the server until SIGTERM or SIGINT.

SIGTERM (or SIGINT) stops gracefully (WebcallServer.shutdown: every client told "Server shutdown", recordings
finalized, queued hook events posted) within --shutdown-timeout; a second signal, or that deadline, exits at
once (media workers killed first). SIGHUP reloads the TLS certificate and key without dropping anyone.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import signal
import sys

from .. import eventloop
from ..logs import configure
from .app import WebcallServer
from .config import parse_args

log = logging.getLogger("webcall.server")


def _exit_now(server: WebcallServer, why: str) -> None:
    log.warning("exiting at once: %s", why)
    server.kill_workers()
    logging.shutdown()
    os._exit(1)


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

    def on_stop_signal() -> None:
        if stop.is_set():
            _exit_now(server, "second stop signal")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, server.reload_tls)
    rest = f", REST http://{server.config.rest_host}:{server.rest_port}/rest-api/" if server.rest_port else ""
    tls = f", https://localhost:{server.tls_port}/" if server.tls_port else ""
    tcp = f" tcp/{server.media_tcp_port}" if server.media_tcp_port else ""
    print(f"webcall: open http://localhost:{server.http_port}/  (signalling ws://<host>:{server.http_port}, "
          f"media udp/{server.media_port}{tcp}{rest}{tls})", flush=True)
    await stop.wait()
    timeout = server.config.shutdown_timeout
    try:
        await asyncio.wait_for(server.shutdown(), timeout)
    except TimeoutError:
        _exit_now(server, f"--shutdown-timeout ({timeout} s) passed")


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
    eventloop.run(_serve(WebcallServer(config)), config.event_loop)
