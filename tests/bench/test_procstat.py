"""procstat's CPU figures: exact totals, not clock ticks, and a process's threads by kind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from webcall_bench import procstat


def _burn_until_mid_tick() -> None:
    """Spin until this process's CPU time is half-way between two clock ticks, where a figure counted in
    ticks is at least 3 ms off."""
    tick = 1 / procstat.CLK_TCK
    while not 0.3 * tick < time.process_time() % tick < 0.7 * tick:
        pass


@contextlib.contextmanager
def _child(code: str) -> Iterator[subprocess.Popen]:
    """A Python child running `code`, its stdin and stdout piped (text); its stdin closed and it waited for after."""
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        yield child
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=10)


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
    with _child(code) as child:
        reported = float(child.stdout.readline())
        user, system = procstat.cpu_times(child.pid)
        assert reported >= 0.2
        assert user >= 0 and system >= 0
        assert reported - 1e-3 <= user + system <= reported + 0.05, (reported, user, system)


def test_cpu_times_of_a_gone_process_raise() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    try:
        procstat.cpu_times(child.pid)
    except OSError:
        return
    raise AssertionError("a reaped process still had CPU times")


def test_threads_of_a_process_by_their_names() -> None:
    # a child whose threads burn known amounts: 0.15 s on one named as an ingest thread, 0.05 s on an unnamed
    # one, next to nothing on the main thread (the event loop's place); each kind reads what it burned
    code = (
        "import ctypes, threading, time, sys\n"
        "libc = ctypes.CDLL(None)\n"
        "def burn(seconds, name=None):\n"
        "    if name: libc.prctl(15, name, 0, 0, 0)\n"  # PR_SET_NAME: this thread's comm
        "    end = time.thread_time() + seconds\n"
        "    while time.thread_time() < end: pass\n"
        "    print(time.thread_time(), flush=True)\n"
        "    sys.stdin.read()\n"  # alive until the parent has read /proc and closed our stdin
        "a = threading.Thread(target=burn, args=(0.15, b'wc-ingest')); a.start()\n"
        "b = threading.Thread(target=burn, args=(0.05,)); b.start()\n"
        "a.join(); b.join()\n"
    )
    with _child(code) as child:
        burned = sorted(float(child.stdout.readline()) for _ in range(2))
        found = procstat.threads(child.pid)
        assert child.pid in found and len(found) == 3, found  # the main thread and the two burners
        kinds: dict[str, float] = {}
        for kind, seconds in found.values():
            kinds[kind] = kinds.get(kind, 0.0) + seconds
        assert set(kinds) == {procstat.EVENT_LOOP, "ingest threads", procstat.OTHER_THREADS}, kinds
        assert abs(kinds["ingest threads"] - burned[1]) < 2e-3, (kinds, burned)
        assert abs(kinds[procstat.OTHER_THREADS] - burned[0]) < 2e-3, (kinds, burned)
        assert kinds[procstat.EVENT_LOOP] < 0.15, kinds  # the interpreter's start-up, not the burning
        assert sum(kinds.values()) <= sum(procstat.cpu_times(child.pid)) + 1e-3


def test_threads_of_a_gone_process_are_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    assert procstat.threads(child.pid) == {}
