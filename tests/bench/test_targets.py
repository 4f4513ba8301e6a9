"""The per-packet cost targets judged on known figures: one run's steps and knee, or a --repeat summary."""

from __future__ import annotations

import pytest

from webcall_bench.repeat import summarize
from webcall_bench.targets import (Point, capacity_of_run, judge, median_capacity, points_of_run,
                                   points_of_summary, text)


def _step(players: int, ratio: float | None, p99: float | None, ok: bool = True) -> dict:
    return {"players": players, "ok": ok, "server_cpu": {"ratio_to_compiled": ratio}, "latency_ms": {"p99": p99},
            "delivery": {"loss_pct": 0.0}}


def _run(steps: list[dict], capacity: int | None) -> dict:
    knee = ({"reached": True, "capacity_players": capacity} if capacity is not None
            else {"reached": False, "capacity_players": None})
    return {"steps": steps, "knee": knee}


def test_every_target_met() -> None:
    run = _run([_step(10, 1.9, 0.5), _step(100, 1.3, 2.0), _step(300, 1.1, 4.0), _step(600, 1.2, 9.0),
                _step(900, 2.0, 80.0, ok=False)], capacity=600)
    verdicts = judge(points_of_run(run), capacity_of_run(run))
    assert [v.met for v in verdicts] == [True, True, True]
    assert verdicts[0].detail == "1.30 at 100, 1.10 at 300, 1.20 at 600"  # not the step that broke
    assert verdicts[2].detail == "capacity 600 players, p99 4.00 ms at 300 (at the 300-player step)"


def test_one_step_over_the_ratio_fails_the_target_and_is_named() -> None:
    points = [Point(10, 2.09, 0.5, True), Point(100, 1.43, 1.6, True), Point(300, 1.29, 4.2, True)]
    verdicts = judge(points, None)
    assert verdicts[0].met is False and "1.43 at 100" in verdicts[0].detail
    assert verdicts[1].met is False and verdicts[1].detail == "2.09 at 10"
    assert verdicts[2].met is None and "no step broke" in verdicts[2].detail
    assert "NOT met" in text(verdicts) and "not measured" in text(verdicts)


def test_p99_at_half_capacity_is_interpolated_between_the_held_steps_around_it() -> None:
    points = [Point(300, None, 4.13, True), Point(450, None, 5.9, True), Point(750, None, 16.4, True)]
    verdict = judge(points, 750)[2]
    # half of 750 is 375: (375 - 300) / (450 - 300) = half of the way from 4.13 to 5.9 ms
    assert verdict.met is False
    assert verdict.detail == ("capacity 750 players, p99 5.02 ms at 375 (between 4.13 ms at 300 and 5.90 ms at "
                              "450 players)")
    assert judge(points, 600)[2].met is True  # half is 300: read there, 4.13 ms


@pytest.mark.parametrize(("points", "capacity", "why"), [
    ([Point(500, None, 4.0, True)], 600, "no held steps on both sides of 300"),  # nothing at or below half
    ([Point(100, None, 2.0, True), Point(400, None, 3.0, False)], 600, "no held steps on both sides of 300"),
    ([Point(10, None, 1.0, True)], None, "the capacity is not known"),
])
def test_p99_at_half_capacity_not_measured_without_steps_around_it(points, capacity, why) -> None:
    verdict = judge(points, capacity)[2]
    assert verdict.met is None and why in verdict.detail


def test_ratios_not_measured_without_a_compiled_ceiling_or_the_steps() -> None:
    verdicts = judge([Point(10, None, 1.0, True), Point(200, None, 3.0, True)], None)
    assert verdicts[0].met is None and verdicts[1].met is None
    assert judge([Point(50, 1.1, 1.0, True)], None)[1].met is None  # no 10-player step


def test_summary_medians_and_the_runs_median_capacity() -> None:
    runs = [_run([_step(10, 1.8, 0.5), _step(100, 1.2, 2.0), _step(200, 1.3, 3.0)], capacity=400),
            _run([_step(10, 2.4, 0.7), _step(100, 1.4, 2.4), _step(200, 1.2, 4.8)], capacity=380),
            _run([_step(10, 1.9, 0.6), _step(100, 1.25, 2.2), _step(200, 1.5, 6.0, ok=False)], capacity=None)]
    points = points_of_summary(summarize(runs))
    assert points == [Point(10, 1.9, 0.6, True), Point(100, 1.25, 2.2, True), Point(200, 1.3, 4.8, False)]
    assert median_capacity(runs) == 390  # the two runs that found a knee
    verdicts = judge(points, median_capacity(runs))
    assert [v.met for v in verdicts] == [True, True, None]  # the 200 step did not hold in every run
