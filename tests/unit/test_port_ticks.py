"""The media port ticks each transport when it says it is due, not on every tick (port.py `_tick_transports`).

A connected player is due about once a second (its sender reports); a handshaking transport, or a publisher with
packets missing, on every tick. The stand-ins below are the port's view of a transport: `tick(now)` returning the next due time.
"""

from __future__ import annotations

import random
import time

from webcall.media.endpoints import rtcp_interval
from webcall.media.failures import Failure
from webcall.media.port import MAX_LATE, MAX_TAKE_IN_GAP, TAKE_IN_INTERVAL, TAKE_IN_JITTER, TICK_INTERVAL, MediaPort, _slot_now
from webcall.media.reports import RTCP_WINDOW


class Ticked:
    def __init__(self, port: MediaPort, name: str, every: float | None) -> None:
        self.port, self.id, self.every = port, name, every
        self.local_ufrag = name
        self.addresses: set = set()
        self.visits: list[float] = []
        self.failed: Failure | None = None
        self.raises = False
        port.register(self)  # type: ignore[arg-type]

    def tick(self, now: float) -> float | None:
        self.visits.append(now)
        if self.raises:
            raise RuntimeError("a bug in one transport")
        return None if self.every is None else now + self.every

    def fail(self, reason: Failure) -> None:
        self.failed = reason
        self.port.unregister(self)  # type: ignore[arg-type]


def run_ticks(port: MediaPort, seconds: float, after: float = 0.0) -> None:
    """The port's ticks for `seconds`, on its grid, from the first grid point `after` seconds from now on (the
    port schedules on the real clock: a transport registered now is due at the next grid point). The next grid
    point as the port reckons it: within its timer slack of a grid point, that point counts as already served."""
    first = (_slot_now(time.monotonic() + after) + 1) * TICK_INTERVAL
    for k in range(round(seconds / TICK_INTERVAL)):
        port._tick_transports(first + k * TICK_INTERVAL)


def test_each_transport_is_ticked_when_it_is_due() -> None:
    port = MediaPort()
    player = Ticked(port, "player", every=1.0)
    handshaking = Ticked(port, "handshaking", every=None)
    run_ticks(port, 3.0)
    assert len(handshaking.visits) == 30  # every tick
    assert 2 <= len(player.visits) <= 3  # at its first tick, then when due (once a second, or a little later)
    # a due time is put on the grid the ingest queues are taken in on: up to MAX_LATE late
    assert all(1.0 <= round(b - a, 3) <= 1.0 + MAX_LATE for a, b in zip(player.visits, player.visits[1:]))


def test_a_due_time_already_past_waits_for_the_next_tick() -> None:
    port = MediaPort()
    late = Ticked(port, "late", every=-5.0)  # says it was due in the past: visited again at the next tick, not now
    run_ticks(port, 1.0)
    assert len(late.visits) == 10


def test_an_unregistered_transport_is_not_ticked_again() -> None:
    port = MediaPort()
    gone = Ticked(port, "gone", every=None)
    stays = Ticked(port, "stays", every=None)
    run_ticks(port, 0.5)
    port.unregister(gone)  # type: ignore[arg-type]
    run_ticks(port, 0.5, after=0.5)
    assert len(gone.visits) == 5 and len(stays.visits) == 10
    assert all(entry[2] is not gone for entry in port._due)


def test_a_transport_whose_tick_raises_fails_alone() -> None:
    port = MediaPort()
    broken = Ticked(port, "broken", every=None)
    other = Ticked(port, "other", every=None)
    broken.raises = True
    run_ticks(port, 1.0)
    assert broken.failed == Failure.INTERNAL_ERROR and len(broken.visits) == 1
    assert port.errors == 1 and len(other.visits) == 10


def test_a_transport_asked_to_tick_sooner_is_ticked_once_then() -> None:
    port = MediaPort()
    player = Ticked(port, "player", every=1.0)
    run_ticks(port, 0.1)  # its first tick: next due in a second
    port.tick_at(player, time.monotonic() + 0.25)  # (a publisher's gap: its NACK retry is due sooner)
    port.tick_at(player, time.monotonic() + 0.6)  # later than that: nothing changes
    run_ticks(port, 0.5, after=0.05)
    assert len(player.visits) == 2  # the first tick, then the one asked for; its old entry is dropped
    assert player.visits[1] - player.visits[0] < 0.5


def test_the_port_wakes_only_when_something_is_due() -> None:
    port = MediaPort()
    now = time.monotonic()
    assert port._next_slot(now) * TICK_INTERVAL > now + 0.9  # nothing: it sleeps IDLE_INTERVAL
    player = Ticked(port, "player", every=1.0)
    assert port._next_slot(now) * TICK_INTERVAL < now + 0.15  # a new transport: at the next grid point
    run_ticks(port, 0.1)
    assert port._next_slot(time.monotonic()) * TICK_INTERVAL > now + 0.9  # then when it is due
    assert player.visits


def test_players_due_at_random_instants_share_the_ports_wake_ups() -> None:
    """Sender reports are due at random instants (RFC 3550's 0.5–1.5 s): the port puts them on the grid its
    ingest queues are taken in on, so ten players do not wake it ten times a second."""
    port = MediaPort()
    rng = random.Random(7)

    class Reporting(Ticked):
        def tick(self, now: float) -> float | None:
            self.visits.append(now)
            return now + rng.uniform(0.5, 1.5)

    players = [Reporting(port, f"player{i}", every=None) for i in range(10)]
    run_ticks(port, 5.0)
    wakes = {round(t / TICK_INTERVAL) for p in players for t in p.visits[1:]}  # after the first ticks
    # mostly at take-ins; a due time the next take-in would make more than MAX_LATE late gets a slot of its own
    # (in 200 seeded runs: 4–10 wake-ups, 0–6 of them not at a take-in), not one per player's report (≈ 45)
    assert len(wakes) <= 12, sorted(wakes)
    assert len(wakes & set(port._take_in_slots)) >= 5.0 / MAX_TAKE_IN_GAP - 2  # (in those runs: at least 3)
    # each is visited at the first take-in from when it is due on
    assert all(b - a <= 1.5 + MAX_LATE + 1e-6 for p in players for a, b in zip(p.visits, p.visits[1:]))
    assert all(len(p.visits) >= 1 + int(4.0 / (1.5 + MAX_LATE)) for p in players)


def test_the_take_in_grids_gaps_are_random() -> None:
    """A report due half an interval after the last rides the next take-in (reports.py `rtcp_interval_range`):
    its intervals are the take-in grid's gaps, which RFC 3550 §6.3.1 wants random around the mean (0.5–1.5 ×),
    never a fixed period."""
    port = MediaPort()
    reporting = Ticked(port, "reporting", every=0.5)
    seconds = 300.0
    run_ticks(port, seconds)
    gaps = [round(b - a, 3) for a, b in zip(reporting.visits[1:], reporting.visits[2:])]
    low, high = (1 - TAKE_IN_JITTER) * TAKE_IN_INTERVAL, MAX_TAKE_IN_GAP
    assert len(gaps) >= seconds / high - 2
    assert all(max(0.5, low) <= gap <= min(1.5, high) for gap in gaps), gaps
    assert max(gaps) - min(gaps) >= 0.4, gaps  # at random, not a fixed period
    # a second apart on average (≈ 300 gaps: the mean's standard deviation is ≈ 0.015 s)
    assert abs(sum(gaps) / len(gaps) - TAKE_IN_INTERVAL) <= 0.1, gaps


def test_a_report_after_an_off_grid_tick_still_goes_within_the_rfc_window() -> None:
    """A publisher also ticks off the take-in grid (its keyframe cadence, every 2 s by default), and reports when
    due then. The next report, due half an interval on, must not wait for a take-in more than 1.5 × the interval
    after the last (RFC 3550 §6.3.1): the port puts a due time off by MAX_LATE at most."""
    port = MediaPort()

    class Publisher(Ticked):
        def __init__(self) -> None:
            self.reports: list[float] = []
            self.report_due = 0.0
            self.cadence_due = 0.0
            super().__init__(port, "publisher", every=None)

        def tick(self, now: float) -> float | None:
            self.visits.append(now)
            if now >= self.cadence_due:  # (keyframe cadence: a tick of its own, at an instant of its own)
                self.cadence_due = now + 2.03
            port.tick_at(self, self.cadence_due)  # type: ignore[arg-type]  (asked on every tick, as endpoints.py does)
            if now >= self.report_due:
                self.reports.append(now)
                self.report_due = now + rtcp_interval()
            return self.report_due

    publisher = Publisher()
    run_ticks(port, 300.0)  # (without the MAX_LATE bound, some interval was longer than 1.5 s in ten runs of ten)
    intervals = [round(b - a, 3) for a, b in zip(publisher.reports, publisher.reports[1:])]
    assert len(intervals) >= 200
    low, high = RTCP_WINDOW
    assert all(low <= i <= high for i in intervals), intervals
    assert max(intervals) - min(intervals) >= 0.4, intervals
