"""The Python ceiling of `webcall bench`: the minimal forwarding loop's cost, split per publisher packet and per
player.

The split comes from the difference of two runs (fan-out N and fan-out 1). At a small fan-out each run lasts
about a millisecond, and a single run of each once reported a per-player cost of zero in one measurement of
three on this VM (the bench test's plausibility check failed in CI on it).
"""

from __future__ import annotations

from webcall_bench.ceiling import measure


def test_small_fanout_split_is_positive_every_time() -> None:
    for _ in range(4):
        ceiling = measure(fanout=3, packets=400)
        assert 0 < ceiling["us_per_output_packet"] < 1000, ceiling
        assert ceiling["us_per_input_packet"] >= 0, ceiling
        assert ceiling["us_per_forwarded_packet"] > 0, ceiling
        assert 0 <= ceiling["sys_share"] <= 1, ceiling
