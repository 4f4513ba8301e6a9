"""procstat's CPU figures: exact totals, not clock ticks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from webcall_bench import procstat


def _burn_until_mid_tick() -> None:
    """Spin until this process's CPU time is half-way between two clock ticks, where a figure counted in
    ticks is at least 3 ms off."""
    tick = 1 / procstat.CLK_TCK
    while not 0.3 * tick < time.process_time() % tick < 0.7 * tick:
        pass


def test_cpu_times_total_is_the_process_cpu_clock() -> None:
    for _ in range(5):
        _burn_until_mid_tick()
        before = time.process_time()
        total = sum(procstat.cpu_times(os.getpid()))
        after = time.process_time()
        assert before - 1e-4 <= total <= after + 1e-4, (before, total, after)


def test_cpu_times_of_another_process_counts_its_threads() -> None:
    # a child that burns ~0.2 s of CPU on two threads, then waits: its CPU time, read from here, is what it
    # reports itself to within a millisecond
    code = (
        "import threading, time, sys\n"
        "def burn():\n"
        "    end = time.thread_time() + 0.1\n"
        "    while time.thread_time() < end: pass\n"
        "t = threading.Thread(target=burn); t.start(); burn(); t.join()\n"
        "print(time.process_time(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        reported = float(child.stdout.readline())
        user, system = procstat.cpu_times(child.pid)
        assert reported >= 0.2
        assert user >= 0 and system >= 0
        assert reported - 1e-3 <= user + system <= reported + 0.05, (reported, user, system)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=10)


def test_cpu_times_of_a_gone_process_raise() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    try:
        procstat.cpu_times(child.pid)
    except OSError:
        return
    raise AssertionError("a reaped process still had CPU times")
