"""`webcall` / `python -m webcall`: run the server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from .app import WebcallServer
from .config import parse_args


async def _serve(server: WebcallServer) -> None:
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"webcall: open http://localhost:{server.http_port}/  (signalling ws://<host>:{server.http_port}, "
          f"media udp/{server.media_port})", flush=True)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_serve(WebcallServer(config)))
