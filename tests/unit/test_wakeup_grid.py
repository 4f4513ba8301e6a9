"""The periodic timers keep to one grid on the monotonic clock (eventloop.grid_delay), so that they share the
process's wake-ups: the rate sampler's slices, the media port's take-in, the server pings (test_keepalive.py)."""

from __future__ import annotations

import asyncio
import time

from webcall.eventloop import TIMER_SLACK, grid_delay
from webcall.media import port as port_mod
from webcall.wcs.sampler import RateSampler


def _off_grid(t: float, step: float) -> float:
    return abs(t - round(t / step) * step)


def test_grid_delay_is_the_time_to_the_next_multiple() -> None:
    for step in (0.1, 0.2, 1.0, 0.04):
        delay = grid_delay(step)
        now = time.monotonic()
        assert 0 <= delay <= step + TIMER_SLACK
        assert _off_grid(now + delay, step) < 1e-3


def test_a_wake_up_a_hair_early_waits_a_whole_step(monkeypatch) -> None:
    step = 0.1
    early = 1000 * step - TIMER_SLACK / 2  # a timer set for slot 1000 that fired a little before it
    monkeypatch.setattr(time, "monotonic", lambda: early)
    assert abs(grid_delay(step) - (step + TIMER_SLACK / 2)) < 1e-9


class Stream:
    media_session_id = "s1"
    label = "s1"

    def __init__(self) -> None:
        self.sampled_at: list[float] = []

    def sample(self, now: float) -> None:
        self.sampled_at.append(time.monotonic())


async def test_the_rate_sampler_wakes_on_the_grid() -> None:
    stream = Stream()
    sampler = RateSampler(0.2, lambda: [stream])  # one slice: a wake-up per interval
    await asyncio.sleep(grid_delay(0.2) + 0.1)  # started half-way between two grid points
    sampler.start()
    await asyncio.sleep(1.1)
    await sampler.stop()
    assert len(stream.sampled_at) >= 4
    # on the grid (one wake-up may be late on a loaded machine; a relative sleep's phase is anywhere)
    late = [t for t in stream.sampled_at if _off_grid(t, 0.2) >= 0.03]
    assert len(late) <= 1, stream.sampled_at


async def test_the_port_takes_in_on_multiples_of_its_interval() -> None:
    port = port_mod.MediaPort()  # not started: no socket, and its timer is not armed
    for _ in range(5):
        port._start_grid()
        assert port._take_in_slot % port_mod._coarse_every() == 0
        assert port._take_in_slot * port_mod.TICK_INTERVAL > time.monotonic()
        await asyncio.sleep(0.03)
