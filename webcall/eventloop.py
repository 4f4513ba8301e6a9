"""The event loop each process runs on (the control process and every media worker: one loop per process).

uvloop (libuv, in C) by default: on this project's 2-vCPU VM a process woken for each of 134 datagrams a second
spends about half the CPU per wake-up under uvloop that it does under asyncio's own loop (its Python `_run_once`,
selector and handles run cold at every packet), and the forwarding path of a publisher is exactly that — see
docs/per-packet-cost.md, "Third pass". `--event-loop asyncio` keeps the standard library's loop, for
comparison and debugging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOPS = ("uvloop", "asyncio")
DEFAULT_LOOP = "uvloop"
TIMER_SLACK = 0.005  # s: what is due this soon after a wake-up runs in it (the loop's timers fire a hair early)


def run(main: Coroutine[Any, Any, T], loop: str = DEFAULT_LOOP) -> T:
    """asyncio.run(main) on the chosen loop."""
    if loop not in LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(LOOPS)}")
    if loop == "uvloop":
        import uvloop  # pinned in requirements.txt; imported here so that `asyncio` needs nothing more

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


def loop_name() -> str:
    """Which loop this process runs on ("uvloop" or "asyncio"), for /health and a worker's hello."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
