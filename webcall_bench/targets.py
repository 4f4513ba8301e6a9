"""The per-packet cost targets, judged on one run or on the medians of `--repeat`.

The targets (README, "Against the compiled ceiling"):

* the server's CPU per forwarded packet at most 1.3 × the compiled ceiling at every step from 100 players up,
  and at most 2 × at 10 players (steps that held: one past the knee measures an overloaded server);
* added latency p99 under 5 ms at half the measured capacity. The capacity is the last step that held before
  the knee, so it is known only when a step broke. The p99 is read at a step with half that many players, or
  interpolated between the steps on either side; a ramp fine enough there (`--steps 150:1200:x1.25`) judges it
  in one run.

A target no step measured is "not measured", never met.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

RATIO_FROM_100 = 1.3
RATIO_AT_10 = 2.0
P99_AT_HALF_CAPACITY_MS = 5.0


@dataclass(frozen=True)
class Point:
    """One step's figures that the targets read."""

    players: int
    ratio_to_compiled: float | None
    latency_p99_ms: float | None
    ok: bool


@dataclass(frozen=True)
class Verdict:
    target: str
    met: bool | None  # None: not measured
    detail: str

    def line(self) -> str:
        state = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"  {self.target}: {state} — {self.detail}"


def points_of_run(result: dict) -> list[Point]:
    return [Point(s["players"], (s.get("server_cpu") or {}).get("ratio_to_compiled"),
                  (s.get("latency_ms") or {}).get("p99"), bool(s.get("ok"))) for s in result.get("steps", [])]


def capacity_of_run(result: dict) -> int | None:
    knee = result.get("knee") or {}
    return knee.get("capacity_players") if knee.get("reached") else None


def points_of_summary(summary: dict) -> list[Point]:
    """A --repeat summary's medians; a step is ok only if every run that reached it held."""
    def median(figure: dict | None) -> float | None:
        return figure["median"] if figure else None

    return [Point(s["players"], median(s.get("ratio_to_compiled")), median(s.get("latency_p99_ms")),
                  s["runs"] > 0 and s["ok"] == s["runs"]) for s in summary["steps"]]


def median_capacity(results: list[dict]) -> int | None:
    """The median capacity of the runs whose ramp found a knee."""
    found = [c for c in map(capacity_of_run, results) if c is not None]
    return round(statistics.median(found)) if found else None


def judge(points: list[Point], capacity: int | None) -> list[Verdict]:
    return [_ratio_from_100(points), _ratio_at_10(points), _p99_at_half(points, capacity)]


def _ratios(points: list[Point]) -> str:
    return ", ".join(f"{p.ratio_to_compiled:.2f} at {p.players}" for p in points)


def _ratio_from_100(points: list[Point]) -> Verdict:
    target = f"× C ≤ {RATIO_FROM_100} from 100 players up"
    measured = [p for p in points if p.players >= 100 and p.ok and p.ratio_to_compiled is not None]
    if not measured:  # (a step past the knee measures an overloaded server: not judged)
        return Verdict(target, None, "no held step of 100 players or more with a compiled ceiling")
    return Verdict(target, all(p.ratio_to_compiled <= RATIO_FROM_100 for p in measured), _ratios(measured))


def _ratio_at_10(points: list[Point]) -> Verdict:
    target = f"× C ≤ {RATIO_AT_10} at 10 players"
    measured = [p for p in points if p.players == 10 and p.ok and p.ratio_to_compiled is not None]
    if not measured:
        return Verdict(target, None, "no held step of 10 players with a compiled ceiling")
    return Verdict(target, measured[0].ratio_to_compiled <= RATIO_AT_10, _ratios(measured))


def _p99_at_half(points: list[Point], capacity: int | None) -> Verdict:
    target = f"latency p99 < {P99_AT_HALF_CAPACITY_MS:g} ms at half the capacity"
    if capacity is None:
        return Verdict(target, None, "no step broke, so the capacity is not known: ramp on until one does")
    half = capacity / 2
    held = [p for p in points if p.ok and p.latency_p99_ms is not None]
    below = [p for p in held if p.players <= half]
    above = [p for p in held if p.players >= half]
    if not below or not above:
        return Verdict(target, None, f"capacity {capacity} players: no held steps on both sides of {half:g}")
    lo, hi = max(below, key=lambda p: p.players), min(above, key=lambda p: p.players)
    if lo.players == hi.players:
        p99, how = lo.latency_p99_ms, f"at the {lo.players}-player step"
    else:
        share = (half - lo.players) / (hi.players - lo.players)
        p99 = lo.latency_p99_ms + share * (hi.latency_p99_ms - lo.latency_p99_ms)
        how = (f"between {lo.latency_p99_ms:.2f} ms at {lo.players} and {hi.latency_p99_ms:.2f} ms at "
               f"{hi.players} players")
    return Verdict(target, p99 < P99_AT_HALF_CAPACITY_MS,
                   f"capacity {capacity} players, p99 {p99:.2f} ms at {half:g} ({how})")


def text(verdicts: list[Verdict]) -> str:
    return "\n".join(["targets:"] + [v.line() for v in verdicts])


def as_json(verdicts: list[Verdict]) -> list[dict]:
    return [{"target": v.target, "met": v.met, "detail": v.detail} for v in verdicts]
