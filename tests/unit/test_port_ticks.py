"""The media port ticks each transport when it says it is due, not on every tick (port.py `_tick_transports`).

A connected player is due about once a second (its sender reports); a handshaking transport or a publisher on
every tick. The stand-ins below are the port's view of a transport: `tick(now)` returning the next due time.
"""

from __future__ import annotations

from webcall.media.failures import Failure
from webcall.media.port import TICK_INTERVAL, MediaPort


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


def run_ticks(port: MediaPort, seconds: float, start: float = 100.0) -> None:
    for k in range(round(seconds / TICK_INTERVAL)):
        port._tick_transports(start + k * TICK_INTERVAL)


def test_each_transport_is_ticked_when_it_is_due() -> None:
    port = MediaPort()
    player = Ticked(port, "player", every=1.0)
    handshaking = Ticked(port, "handshaking", every=None)
    run_ticks(port, 3.0)
    assert len(handshaking.visits) == 30  # every tick
    assert len(player.visits) == 3  # once a second: at its first tick, then when due
    assert [round(b - a, 3) for a, b in zip(player.visits, player.visits[1:])] == [1.0, 1.0]


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
    run_ticks(port, 0.5, start=200.0)
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
