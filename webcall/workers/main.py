"""The media worker process: `python -m webcall.workers.main --index I --channel-fd FD [...]`.

A worker is started by `supervisor.Supervisor`, never by hand. It runs its own asyncio loop, talks to the
control process only through the inherited channel socket, and owns UDP port `--media-port` (media-port + i;
binding it is the job of the media code plugged in with `--app`, this module only passes the number on).

It must never outlive the control process, so it watches two signals:

1. the kernel's: prctl(PR_SET_PDEATHSIG, SIGKILL) kills it when its parent dies, even by SIGKILL (checked
   against `--parent-pid` right after, for a parent that died before the prctl);
2. the channel's: EOF on the channel socket ends the loop and the process (exit status 0).

Built-in ops, enough for the supervisor and its tests: `hello`, `echo`, `sleep`, `block` (blocks the event
loop: a stuck worker), `fail`, `shutdown`. `--app module:function` plugs in the real media code:
`function(ctx: WorkerContext)` is called (and awaited if it returns an awaitable) before `hello` is answered,
and registers its own ops and events on `ctx.channel`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .. import eventloop
from ..logs import configure
from .channel import Channel

log = logging.getLogger("webcall.workers.main")

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when the thread that forked it exits. False if unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class WorkerContext:
    """What the plugged-in media code gets: who this worker is and its channel to the control process."""

    index: int
    media_host: str
    media_port: int
    channel: Channel
    stop: asyncio.Event
    args: argparse.Namespace
    info: dict[str, Any] = field(default_factory=dict)  # merged into the `hello` reply


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m webcall.workers.main", description="webcall media worker")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--parent-pid", type=int, default=0, help="exit at once if the parent is not this pid")
    p.add_argument("--media-host", default="0.0.0.0")
    p.add_argument("--media-port", type=int, default=0)
    p.add_argument("--app", default="", help="module:function that sets up the media code")
    p.add_argument("--settings", default="{}", help="a JSON object for the --app code (its settings)")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--event-loop", default=eventloop.DEFAULT_LOOP, choices=eventloop.LOOPS)
    return p.parse_args(argv)


def _builtin_ops(ctx: WorkerContext) -> None:
    ch = ctx.channel

    def hello(**_: Any) -> dict[str, Any]:
        return {"index": ctx.index, "pid": os.getpid(), "media_host": ctx.media_host,
                "media_port": ctx.media_port, "event_loop": eventloop.loop_name(), **ctx.info}

    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def block(seconds: float) -> float:
        time.sleep(seconds)  # deliberately blocks the loop: a worker stuck in a busy loop or a C call
        return seconds

    def fail(message: str = "failed on request") -> None:
        raise RuntimeError(message)

    def shutdown() -> bool:
        asyncio.get_running_loop().call_soon(ctx.stop.set)  # after the reply is written
        return True

    ch.on_request("hello", hello)
    ch.on_request("echo", lambda **kw: kw)
    ch.on_request("sleep", sleep)
    ch.on_request("block", block)
    ch.on_request("fail", fail)
    ch.on_request("shutdown", shutdown)


def _load_app(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "setup")


async def run(args: argparse.Namespace) -> int:
    sock = socket.socket(fileno=args.channel_fd)
    channel = await Channel.from_socket(sock, name=f"worker{args.index}")
    ctx = WorkerContext(index=args.index, media_host=args.media_host, media_port=args.media_port,
                        channel=channel, stop=asyncio.Event(), args=args)
    _builtin_ops(ctx)
    if args.app:
        result = _load_app(args.app)(ctx)
        if inspect.isawaitable(result):
            await result
    # As the control process does (server/cli.py): what start-up loaded is frozen out of the collector's passes
    # (shorter full passes), then a full pass resets its count of long-lived objects, so that full passes, which
    # free ended endpoints' reference cycles, come as often as the live set warrants.
    gc.collect()
    gc.freeze()
    gc.collect()
    channel.start(on_closed=lambda reason: ctx.stop.set())  # EOF: the control process is gone
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, ctx.stop.set)
    await ctx.stop.wait()
    channel.close("worker stopping")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_parent_death_signal(signal.SIGKILL)
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 1  # the parent died before the prctl took effect: nobody would ever stop us
    configure(args.log_level, worker=args.index)
    return eventloop.run(run(args), args.event_loop)


if __name__ == "__main__":
    sys.exit(main())
