"""`python -m webcall_bench.wakeup`: the CPU one wake-up of each event loop costs, per datagram received."""

from __future__ import annotations

import json

import pytest

from webcall_bench import wakeup


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_each_loop_counts_what_was_sent_and_its_cpu(loop) -> None:
    result = wakeup.measure(loop, rate=400, seconds=2.5)
    assert result["loop"] == loop  # the run happened on the loop it names
    expected = 400 * (2.5 - wakeup.WARMUP - 0.5)  # the window between the warm-up and the early stop
    assert 0.7 * expected <= result["packets"] <= 1.3 * expected, result
    assert 0 < result["us_cpu_per_datagram"] < 5000, result


def test_the_command_prints_a_line_per_run(capsys) -> None:
    wakeup.main(["--rates", "300", "--seconds", "2", "--rounds", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["loop"] for line in lines] == ["uvloop", "asyncio"]
    assert all(line["rate"] == 300 and line["packets"] > 0 for line in lines), lines
