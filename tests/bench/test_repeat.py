"""`webcall bench --repeat K [--versus ARG]`: K whole runs, each step's figures as median (lowest–highest).

The arithmetic is checked on runs with known figures; the alternation between the two servers, the runs' file
names and the summary file are checked with the run itself replaced by a recorder (the bench's own measurements
are tested for real in test_bench.py)."""

from __future__ import annotations

import json

import pytest

from webcall_bench import cli
from webcall_bench.repeat import spread, summarize, table


def _step(players: int, us: float | None, ratio: float | None, p99: float, ok: bool = True) -> dict:
    return {"players": players, "ok": ok, "server_cpu": {"us_per_packet": us, "ratio_to_compiled": ratio},
            "latency_ms": {"p99": p99}, "delivery": {"loss_pct": 0.0}}


def _run(steps: list[dict], fixed: float, per_player: float) -> dict:
    return {"steps": steps, "fit": {"server": {"fixed_us": fixed, "per_player_us": per_player}, "compiled": None}}


RUNS = [
    _run([_step(10, 30.0, 1.9, 0.8), _step(100, 10.0, 1.5, 2.0)], 300.0, 7.0),
    _run([_step(10, 41.0, 2.2, 3.3), _step(100, 11.0, 1.7, 4.6, ok=False), _step(200, 9.5, 1.4, 4.5)], 330.0, 7.8),
    _run([_step(10, 34.0, None, 1.0), _step(100, 9.0, 1.4, 1.9)], 250.0, 7.1),
]


def test_spread_is_median_lowest_highest() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
    assert spread([]) is None


def test_summary_of_each_step_over_the_runs_that_reached_it() -> None:
    summary = summarize(RUNS)
    assert summary["runs"] == 3
    by_players = {s["players"]: s for s in summary["steps"]}
    assert sorted(by_players) == [10, 100, 200]
    ten = by_players[10]
    assert (ten["runs"], ten["ok"]) == (3, 3)
    assert ten["us_per_packet"] == {"median": 34.0, "min": 30.0, "max": 41.0, "n": 3}
    assert ten["ratio_to_compiled"] == {"median": 2.05, "min": 1.9, "max": 2.2, "n": 2}  # one run had no ratio
    assert ten["latency_p99_ms"]["max"] == 3.3
    assert (by_players[100]["runs"], by_players[100]["ok"]) == (3, 2)
    assert by_players[200]["runs"] == 1 and by_players[200]["us_per_packet"]["median"] == 9.5
    assert by_players[200]["fanout_ratio_to_compiled"] is None
    assert by_players[200]["ratio_to_compiled_woken"] is None
    assert summary["fit"]["server_fixed_us"] == {"median": 300.0, "min": 250.0, "max": 330.0, "n": 3}
    assert summary["fit"]["compiled_fixed_us"] is None


def test_table_shows_median_and_range() -> None:
    text = table(summarize(RUNS), "title")
    lines = text.splitlines()
    assert lines[0] == "title"
    assert "x C woken" in lines[1]
    row10 = next(line for line in lines if line.split()[0] == "10")
    assert "34.0 (30.0–41.0)" in row10 and "2.05 (1.90–2.20)" in row10 and "3/3" in row10
    row200 = next(line for line in lines if line.split()[0] == "200")
    assert "9.5" in row200 and "(" not in row200.split()[2]  # one run: no range
    assert "server: 300 (250–330) µs per publisher packet + 7.10 (7.00–7.80) µs per player" in text
    assert lines[-1] == "median (lowest–highest) over 3 runs"


def test_repeat_alternates_the_two_servers_and_writes_a_summary(tmp_path, monkeypatch, capsys) -> None:
    calls = []

    def run_once(cfg, results=None):
        calls.append((cfg.output, cfg.server_args))
        results.append(RUNS[len(calls) % 3])
        return 0

    monkeypatch.setattr(cli, "run_once", run_once)
    out = tmp_path / "ab.json"
    code = cli.main(["--steps", "10,100", "--repeat", "2", "--server-arg=--log-level=info",
                     "--versus=--event-loop=asyncio", "--output", str(out)])
    assert code == 0
    a, b = ["--log-level=info"], ["--log-level=info", "--event-loop=asyncio"]
    assert calls == [(str(tmp_path / "ab.run1a.json"), a), (str(tmp_path / "ab.run1b.json"), b),
                     (str(tmp_path / "ab.run2a.json"), a), (str(tmp_path / "ab.run2b.json"), b)]
    summary = json.loads(out.read_text())
    assert summary["repeat"] == 2
    assert [v["server_args"] for v in summary["variants"]] == [a, b]
    assert summary["variants"][1]["runs"] == [str(tmp_path / "ab.run1b.json"), str(tmp_path / "ab.run2b.json")]
    assert summary["variants"][0]["summary"]["runs"] == 2
    printed = capsys.readouterr().out
    assert "server args: --log-level=info --event-loop=asyncio" in printed and f"summary: {out}" in printed


def test_a_failed_run_fails_the_repeat(tmp_path, monkeypatch) -> None:
    outcomes = iter([0, 1, 0])

    def run_once(cfg, results=None):
        results.append(RUNS[0])
        return next(outcomes)

    monkeypatch.setattr(cli, "run_once", run_once)
    assert cli.main(["--repeat", "3", "--output", str(tmp_path / "r.json")]) == 1


def test_ctrl_c_ends_the_repeat_and_summarises_what_ran(tmp_path, monkeypatch) -> None:
    outcomes = iter([0, cli.INTERRUPTED])
    calls = []

    def run_once(cfg, results=None):
        calls.append(cfg.output)
        results.append(RUNS[0])
        return next(outcomes)

    monkeypatch.setattr(cli, "run_once", run_once)
    out = tmp_path / "r.json"
    assert cli.main(["--repeat", "5", "--output", str(out)]) == cli.INTERRUPTED
    assert len(calls) == 2
    assert json.loads(out.read_text())["variants"][0]["summary"]["runs"] == 2


@pytest.mark.parametrize("argv", [["--repeat", "0"], ["--versus=--event-loop=asyncio", "--url", "ws://127.0.0.1:1/"]])
def test_bad_repeat_arguments_are_refused(argv) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
