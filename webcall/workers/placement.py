"""Which worker gets a new publisher or player: a pure policy, no I/O, no clocks.

Load is a weighted count the control process keeps itself: every publisher placed adds `publisher_weight`
(default 4: it decrypts, keeps the NACK ring, fans out and feeds relays), every player `player_weight`
(default 1: one encrypt+send per packet); `release_*` takes them off again. Counts and not reported CPU,
because the count is right the moment a placement is made — a burst of 50 joins must not all land on the
worker that looked idle in the last CPU sample — and because it makes placement deterministic and testable.
Worker reports can still correct it: `set_load(worker, value)` replaces the figure (for instance with the
worker's own weighted count after a restart, or a CPU percentage if the integrator prefers that scale —
`threshold` is then in the same unit).

Modes:

- "fill" (default): a player goes to its publisher's worker — no relay needed — until that worker's load
  would pass `threshold`; then to a worker already receiving the stream by relay if one is under the
  threshold, else to the least-loaded worker (which then gets a relay).
- "spread": every player goes to the least-loaded worker; ties go round-robin, so the players of one stream
  spread over equal workers.

Publishers always go to the least-loaded worker (ties round-robin).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

Mode = Literal["fill", "spread"]


class Placement:
    def __init__(self, workers: Iterable[int], mode: Mode = "fill", threshold: float = 100.0, *,
                 player_weight: float = 1.0, publisher_weight: float = 4.0) -> None:
        if mode not in ("fill", "spread"):
            raise ValueError(f"placement mode must be 'fill' or 'spread', not {mode!r}")
        if threshold <= 0:
            raise ValueError("threshold must be positive")
        self.mode: Mode = mode
        self.threshold = threshold
        self.player_weight = player_weight
        self.publisher_weight = publisher_weight
        self._load: dict[int, float] = {w: 0.0 for w in workers}
        if not self._load:
            raise ValueError("placement needs at least one worker")
        self._last: int | None = None  # the last worker chosen by a tie-break, for round-robin

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def workers(self) -> list[int]:
        return sorted(self._load)

    def load(self, worker: int) -> float:
        return self._load[worker]

    def loads(self) -> dict[int, float]:
        return dict(self._load)

    def set_load(self, worker: int, load: float) -> None:
        """Replace a worker's load with a reported figure."""
        if worker not in self._load:
            raise KeyError(worker)
        self._load[worker] = max(0.0, float(load))

    def add_worker(self, worker: int, load: float = 0.0) -> None:
        self._load[worker] = load

    def remove_worker(self, worker: int) -> None:
        """A lost worker takes no placements until `add_worker` (its replacement starts empty)."""
        if len(self._load) == 1 and worker in self._load:
            raise ValueError("cannot remove the last worker")
        self._load.pop(worker, None)
        if self._last == worker:
            self._last = None

    # -- decisions ------------------------------------------------------------------------------------------

    def place_publisher(self) -> int:
        worker = self._least_loaded(self._load)
        self._load[worker] += self.publisher_weight
        return worker

    def place_player(self, publisher_worker: int | None, relayed_to: Collection[int] = ()) -> int:
        """The worker for a new player of a stream published on `publisher_worker` (None or a removed worker:
        the publisher is gone or moving). `relayed_to`: workers already receiving that stream by relay."""
        worker = self._choose_player(publisher_worker, relayed_to)
        self._load[worker] += self.player_weight
        return worker

    def place_player_on(self, worker: int) -> int:
        """A player that must sit on `worker` (it reads something only that worker holds: a rendition)."""
        self._load[worker] += self.player_weight
        return worker

    def release_publisher(self, worker: int) -> None:
        self._release(worker, self.publisher_weight)

    def release_player(self, worker: int) -> None:
        self._release(worker, self.player_weight)

    # -- internals ------------------------------------------------------------------------------------------

    def _choose_player(self, publisher_worker: int | None, relayed_to: Collection[int]) -> int:
        if self.mode == "spread":
            return self._least_loaded(self._load)
        fits = {w: load for w, load in self._load.items() if load + self.player_weight <= self.threshold}
        if publisher_worker in fits:
            return publisher_worker  # type: ignore[return-value]
        relayed = {w: load for w, load in fits.items() if w in relayed_to}
        if relayed:
            return self._least_loaded(relayed)
        return self._least_loaded(fits or self._load)

    def _least_loaded(self, candidates: dict[int, float]) -> int:
        low = min(candidates.values())
        tied = sorted(w for w, load in candidates.items() if load == low)
        if len(tied) > 1 and self._last is not None:
            after = [w for w in tied if w > self._last]
            choice = after[0] if after else tied[0]
        else:
            choice = tied[0]
        self._last = choice
        return choice

    def _release(self, worker: int, weight: float) -> None:
        if worker in self._load:
            self._load[worker] = max(0.0, self._load[worker] - weight)
