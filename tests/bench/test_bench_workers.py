"""The bench with media workers: every server process counted, players and relayed packets from /metrics, the
relay's cost from two runs, and each worker pinned to its own CPU. Crafted inputs and plain child processes:
no server is started here."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from webcall_bench import procstat
from webcall_bench.relaycost import estimate
from webcall_bench.runner import _all_cpus, _pin, _process_figures, _relay_figures, _thread_figures, parse_metrics

METRICS = """# HELP webcall_worker_players Players placed on each media worker
webcall_players 3
webcall_worker_players{worker="0"} 1
webcall_worker_players{worker="1"} 2
webcall_worker_publishers{worker="0"} 1
webcall_relay_packets_total{worker="0",direction="sent"} 1000
webcall_relay_packets_total{worker="1",direction="received"} 990
"""


def test_parse_metrics() -> None:
    m = parse_metrics(METRICS)
    assert m["webcall_players"] == [({}, 3.0)]
    assert ({"worker": "0", "direction": "sent"}, 1000.0) in m["webcall_relay_packets_total"]


def test_process_figures_sum_every_process_and_place_players() -> None:
    tree0 = {10: ("control", 1.0, 0.5), 11: ("worker 0", 2.0, 1.0), 12: ("worker 1", 3.0, 1.0),
             13: ("worker 1", 0.0, 0.0)}  # 13 is lost in the window, 14 replaces it
    tree1 = {10: ("control", 1.1, 0.5), 11: ("worker 0", 3.0, 1.5), 12: ("worker 1", 3.5, 1.0),
             14: ("worker 1", 0.1, 0.0)}
    processes, cpu0, cpu1 = _process_figures(tree0, tree1, 2.0, parse_metrics(METRICS))
    assert cpu0 == (6.0, 2.5) and cpu1 == pytest.approx((7.6, 3.0))
    by_pid = {p.get("pid"): p for p in processes}
    assert by_pid[10]["cpu_fraction"] == pytest.approx(0.05)
    assert by_pid[11]["cpu_fraction"] == pytest.approx(0.75) and by_pid[11]["players"] == 1
    assert by_pid[11]["publishers"] == 1 and by_pid[12]["players"] == 2
    assert by_pid[14]["restarted"] and any(p.get("gone") for p in processes)


def test_thread_figures_by_process_and_kind() -> None:
    # over 2 s: the control's event loop 0.1 s; worker 0's event loop 0.2 s and its ingest threads 0.5 s: one ran
    # on (0.3 s), one started in the window (counted from 0: 0.2 s), one ended (its 0.3 s are in "rest", with
    # nothing taken from the others); worker 1 restarted (pid 13 -> 14): in none of the figures, as in the
    # server's seconds
    threads0 = {(10, "control", 10): ("event loop", 1.0), (11, "worker 0", 11): ("event loop", 2.0),
                (11, "worker 0", 20): ("ingest threads", 0.4), (11, "worker 0", 21): ("ingest threads", 7.0),
                (13, "worker 1", 13): ("event loop", 5.0)}
    threads1 = {(10, "control", 10): ("event loop", 1.1), (11, "worker 0", 11): ("event loop", 2.2),
                (11, "worker 0", 20): ("ingest threads", 0.7), (11, "worker 0", 22): ("ingest threads", 0.2),
                (14, "worker 1", 14): ("event loop", 0.3)}
    figures = _thread_figures(threads0, threads1, seconds=1.1, wall=2.0, packets=10_000)
    assert set(figures) == {"control: event loop", "worker 0: event loop", "worker 0: ingest threads", "rest"}
    assert figures["control: event loop"]["ms_per_s"] == pytest.approx(50)
    assert figures["worker 0: event loop"]["ms_per_s"] == pytest.approx(100)
    assert figures["worker 0: ingest threads"] == {"ms_per_s": pytest.approx(250), "us_per_packet": pytest.approx(50)}
    assert figures["rest"]["ms_per_s"] == pytest.approx(150)
    # one process: labelled by kind alone
    one = _thread_figures({(10, "control", 10): ("event loop", 1.0)}, {(10, "control", 10): ("event loop", 1.5)},
                          0.5, 1.0, 0)
    assert one == {"event loop": {"ms_per_s": 500.0, "us_per_packet": None},
                   "rest": {"ms_per_s": 0.0, "us_per_packet": None}}


def test_relay_figures_over_the_window() -> None:
    before = parse_metrics(METRICS)
    after = parse_metrics(METRICS.replace("} 1000", "} 3000").replace("} 990", "} 2980"))
    relay = _relay_figures(before, after, 10.0)
    assert relay["packets_sent"] == 2000 and relay["packets_received"] == 1990 and relay["per_s"] == 200
    assert _relay_figures(parse_metrics("webcall_players 1\n"), parse_metrics("webcall_players 1\n"), 10) is None


def _run(players: int, seconds: float, forwarded: int, relayed: int | None, idle: float, workers: int) -> dict:
    return {"config": {"publishers": 1, "workers": workers},
            "server": {"idle": {"cpu_fraction": idle}},
            "steps": [{"players": players, "window_s": 10.0, "server_cpu": {"seconds": seconds,
                                                                             "us_per_packet": 1e6 * seconds / forwarded},
                       "delivery": {"packets_received": forwarded},
                       "relay": {"packets_sent": relayed} if relayed is not None else None}]}


def test_relay_cost_takes_out_idle_cpu_and_compares_the_same_forwarded_packets() -> None:
    baseline = _run(100, seconds=2.0 + 0.1, forwarded=100_000, relayed=None, idle=0.01, workers=1)
    # the 2-worker run: 2 % idle, 10 % more forwarded packets, 1000 relayed packets at 50 µs each
    run = _run(100, seconds=0.2 + 2.0 * 1.1 + 0.05, forwarded=110_000, relayed=1000, idle=0.02, workers=2)
    (entry,) = estimate(run, baseline)
    assert entry["idle_corrected"]
    assert entry["us_per_relayed_packet"] == pytest.approx(50, abs=0.5)
    assert entry["share_of_cpu"] == pytest.approx(0.02, abs=0.001) and "noise" in entry["note"]  # under 5 %
    (other,) = estimate(_run(200, 1, 1, 1, 0, 2), baseline)
    assert "no baseline step" in other["note"]


def test_server_processes_and_control_pid() -> None:
    worker = ("import subprocess, sys, time\n"
              "argv = [sys.executable, '-c', 'import time; time.sleep(30)', '-m', 'webcall.workers.main', '--index', '{}']\n")
    code = worker + "ps = [subprocess.Popen([a.format(i) for a in argv]) for i in (1, 0)]\nprint('ready', flush=True)\ntime.sleep(30)\n"
    control = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    cpus = os.sched_getaffinity(0)
    try:
        assert control.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        # until both children have exec'd (a child just forked still has its parent's command line)
        while True:
            procs = procstat.server_processes(control.pid)
            if sum(role.startswith("worker") for role, _ in procs) == 2:
                break
            assert time.monotonic() < deadline, procs
            time.sleep(0.05)
        assert [role for role, _ in procs] == ["control", "worker 0", "worker 1"]
        assert procstat.control_pid(procs[1][1]) == control.pid == procstat.control_pid(control.pid)
        if len(os.sched_getaffinity(0)) >= 2:
            workers = {int(r.split()[1]): pid for r, pid in procs[1:]}
            pinned = _pin(control.pid, workers)
            try:
                server = set(pinned["server_cpus"])
                assert server.isdisjoint(pinned["loadgen_cpus"])
                for index, pid in workers.items():
                    (cpu,) = pinned["worker_cpus"][str(index)]
                    assert all(os.sched_getaffinity(int(t)) == {cpu} for t in os.listdir(f"/proc/{pid}/task"))
                assert os.sched_getaffinity(control.pid) == server
                assert "worker 1" in pinned["text"] and "load generator" in pinned["text"]
            finally:
                _all_cpus()
                for tid in os.listdir(f"/proc/{os.getpid()}/task"):
                    os.sched_setaffinity(int(tid), cpus)  # as it was before
    finally:
        for _, pid in procstat.server_processes(control.pid)[1:]:
            os.kill(pid, 9)
        control.kill()
        control.wait()
