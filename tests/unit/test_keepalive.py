"""The server pings (wcs/keepalive.py): once per interval per session, in wake-ups that sessions share, on the clock's
grid; a session that stops answering is closed after `probes` pings; nothing is pinged after it left."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from webcall.eventloop import TIMER_SLACK
from webcall.wcs import keepalive as keepalive_mod
from webcall.wcs.keepalive import Keepalive

PING = '{"message":"ping","data":[]}'


class FakeSession:
    def __init__(self, name: str, answers: bool = True) -> None:
        self.id = name
        self.closed = False
        self.missed_pongs = 0
        self.answers = answers
        self.pinged_at: list[float] = []

    def send(self, text: str) -> None:
        assert text == PING
        self.pinged_at.append(time.monotonic())
        if self.answers:  # the pong resets the count, as any message does (session.py)
            asyncio.get_running_loop().call_soon(setattr, self, "missed_pongs", 0)

    def close(self) -> None:
        self.closed = True


async def test_each_session_pinged_once_per_interval_in_shared_wake_ups() -> None:
    interval = 0.5
    keepalive = Keepalive(interval, probes=3)
    step = interval / keepalive_mod.SLOTS
    rng = random.Random(7)
    sessions = []
    added_at = {}
    for i in range(80):  # joining at 80 different instants over one interval
        await asyncio.sleep(rng.uniform(0, interval / 80))
        session = FakeSession(f"s{i}")
        added_at[session] = time.monotonic()
        keepalive.add(session)
        sessions.append(session)
    await asyncio.sleep(3 * interval)
    keepalive.close()
    instants = sorted({round(t / step) for s in sessions for t in s.pinged_at})
    for session in sessions:
        assert len(session.pinged_at) >= 2, session.id
        first = session.pinged_at[0] - added_at[session]  # within the interval, never later (a slot earlier at most)
        assert interval - step - TIMER_SLACK <= first < interval + 0.02
        gaps = [b - a for a, b in zip(session.pinged_at, session.pinged_at[1:])]
        assert all(interval - step / 2 < gap < interval + step / 2 for gap in gaps), gaps
        assert not session.closed
    # 80 sessions × 3 pings each came in the grid's wake-ups (SLOTS an interval), not one each
    assert len(instants) <= 3 * keepalive_mod.SLOTS + 2
    for session in sessions:  # on the grid: multiples of the step on the monotonic clock
        for t in session.pinged_at:
            assert abs(t - round(t / step) * step) < 0.02


async def test_a_silent_session_is_closed_after_its_probes_and_no_one_else() -> None:
    keepalive = Keepalive(0.1, probes=3)
    silent, alive = FakeSession("silent", answers=False), FakeSession("alive")
    keepalive.add(silent)
    keepalive.add(alive)
    await asyncio.sleep(0.55)
    assert silent.closed
    assert len(silent.pinged_at) == 3  # the fourth wake-up found three pings unanswered
    await asyncio.sleep(0.2)
    assert not alive.closed
    assert len(alive.pinged_at) >= 6
    assert len(keepalive) == 1
    keepalive.close()


async def test_a_session_that_left_is_not_pinged() -> None:
    keepalive = Keepalive(0.1, probes=3)
    gone, closed, staying = FakeSession("gone"), FakeSession("closed"), FakeSession("staying")
    for session in (gone, closed, staying):
        keepalive.add(session)
    keepalive.discard(gone)
    closed.closed = True  # closed without discard: dropped at its next slot
    await asyncio.sleep(0.25)
    assert gone.pinged_at == [] and closed.pinged_at == []
    assert staying.pinged_at
    assert len(keepalive) == 1
    keepalive.discard(staying)
    assert len(keepalive) == 0
    keepalive.close()


async def test_one_failing_session_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeSession):
        def send(self, text: str) -> None:
            raise RuntimeError("socket gone wrong")

    keepalive = Keepalive(0.1, probes=3)
    broken, fine = Broken("broken"), FakeSession("fine")
    keepalive.add(broken)
    keepalive.add(fine)
    await asyncio.sleep(0.35)
    assert len(fine.pinged_at) >= 2
    assert "keepalive failed session=broken" in caplog.text
    assert len(keepalive) == 1
    keepalive.close()
