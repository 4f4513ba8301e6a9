"""The event loop each process runs on (the control process and every media worker: one loop per process).

uvloop (libuv, in C) by default: on this project's 2-vCPU VM a process woken for each of 134 datagrams a second
spends about half the CPU per wake-up under uvloop that it does under asyncio's own loop (its Python `_run_once`,
selector and handles run cold at every packet), and the forwarding path of a publisher is exactly that — see the
README, "Against the compiled ceiling", third pass. `--event-loop asyncio` keeps the standard library's loop, for
comparison and debugging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LOOPS = ("uvloop", "asyncio")
DEFAULT_LOOP = "uvloop"


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


TICK = 0.1  # s: the grid periodic work wakes on


def until_next_tick(now: float, tick: float = TICK) -> float:
    """Seconds from `now` (the loop's clock) to the multiple of `tick` nearest to `now + tick`: between half a
    tick and one and a half. Periodic tasks that sleep by this (the media port's tick, the rate sampler) come
    due in the same loop iteration: one wake-up of the process for all of them instead of one each, and a
    wake-up of a cold interpreter costs more than most of the work. (Not "the next multiple": a timer that
    fires a hair before its grid point, as uvloop's millisecond timers do, would then sleep ~0 and run twice.)
    """
    return round((now + tick) / tick) * tick - now
