"""The worker supervisor (webcall/workers/supervisor.py) with real worker processes (webcall/workers/main.py):
roundtrips, a SIGKILLed worker and a SIGSTOPped one replaced at the same index and port, clean stop through
channel EOF, and no orphans when the control process itself is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from webcall.workers.channel import ChannelClosed, RemoteError
from webcall.workers.supervisor import Supervisor, describe_exit, resolve_worker_count

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        await asyncio.sleep(0.05)
    return [p for p in pids if alive(p)]


class Recorder:
    def __init__(self) -> None:
        self.lost: list[tuple[int, str]] = []
        self.started: list[tuple[int, int]] = []
        self.changed = asyncio.Event()

    def on_lost(self, index: int, reason: str) -> None:
        self.lost.append((index, reason))
        self.changed.set()

    def on_started(self, index: int, handle) -> None:
        self.started.append((index, handle.pid))


@pytest.fixture
async def supervised():
    """Factory for started supervisors; at teardown stops them and checks that no worker outlived them."""
    made: list[tuple[Supervisor, Recorder]] = []
    pids: set[int] = set()

    async def make(count: int = 2, **kwargs) -> tuple[Supervisor, Recorder]:
        rec = Recorder()
        sup = Supervisor(count, media_host="127.0.0.1", on_worker_lost=rec.on_lost, on_worker_started=rec.on_started,
                         **{"ping_interval": 0.2, "ping_timeout": 0.6, **kwargs})
        made.append((sup, rec))
        await sup.start()
        return sup, rec

    yield make
    for sup, rec in made:
        pids.update(pid for _, pid in rec.started)
        await sup.stop(grace=2)
    assert await wait_gone(sorted(pids), 3) == [], "orphaned workers"


def test_resolve_worker_count():
    assert resolve_worker_count("auto") == len(os.sched_getaffinity(0))
    assert resolve_worker_count(" AUTO ") == len(os.sched_getaffinity(0))
    assert resolve_worker_count("3") == 3
    assert resolve_worker_count(2) == 2
    for bad in ("0", "-1", "many", "", 0, -2, True, 1.5):
        with pytest.raises(ValueError):
            resolve_worker_count(bad)


def test_describe_exit():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


async def test_two_workers_answer_on_their_own_channels(supervised):
    sup, rec = await supervised(2, media_port=45000)
    hellos = [await sup.request(i, "hello") for i in range(2)]
    assert [h["index"] for h in hellos] == [0, 1]
    assert [h["event_loop"] for h in hellos] == ["uvloop", "uvloop"]  # a worker's default (webcall/eventloop.py)
    assert [h["media_port"] for h in hellos] == [45000, 45001]
    assert {h["pid"] for h in hellos} == {sup.workers[0].pid, sup.workers[1].pid}
    assert len({h["pid"] for h in hellos} | {os.getpid()}) == 3  # separate processes
    assert await sup.request(1, "echo", blob="aGVsbG8=", n=[1, 2]) == {"blob": "aGVsbG8=", "n": [1, 2]}
    with pytest.raises(RemoteError) as err:
        await sup.request(0, "fail", message="bad stream")
    assert err.value.message == "bad stream"
    assert await sup.request(0, "sleep", seconds=0.01) == 0.01  # the channel survived the error
    assert rec.lost == []


async def test_sigkilled_worker_is_reported_and_replaced(supervised):
    sup, rec = await supervised(2, media_port=45100)
    old0, old1 = sup.workers[0].pid, sup.workers[1].pid
    os.kill(old0, signal.SIGKILL)
    await asyncio.wait_for(rec.changed.wait(), 5)
    assert rec.lost == [(0, "killed by SIGKILL")]
    with pytest.raises(ChannelClosed):
        sup.channel(0)  # while it is being replaced
    handle = await sup.wait_ready(0, timeout=10)
    assert handle.pid != old0 and not alive(old0)
    hello = await sup.request(0, "hello")
    assert hello["index"] == 0 and hello["media_port"] == 45100 and hello["pid"] == handle.pid
    # the other worker never noticed
    assert sup.workers[1].pid == old1
    assert (await sup.request(1, "hello"))["pid"] == old1
    assert rec.lost == [(0, "killed by SIGKILL")]


async def test_stopped_worker_is_found_unresponsive_killed_and_replaced(supervised):
    sup, rec = await supervised(2, ping_interval=0.2, ping_timeout=0.6)
    old1 = sup.workers[1].pid
    t0 = time.monotonic()
    os.kill(old1, signal.SIGSTOP)
    await asyncio.wait_for(rec.changed.wait(), 5)
    detected = time.monotonic() - t0
    assert rec.lost[0][0] == 1 and rec.lost[0][1].startswith("unresponsive")
    assert detected < 0.2 + 0.6 + 1.0  # one interval + the deadline + scheduling slack
    handle = await sup.wait_ready(1, timeout=10)
    assert handle.pid != old1
    assert await wait_gone([old1], 3) == []  # the stopped one was killed, not left behind
    assert (await sup.request(1, "hello"))["index"] == 1
    assert len(rec.lost) == 1  # the kill that followed is not a second loss


async def test_blocked_event_loop_is_unresponsive_too(supervised):
    sup, rec = await supervised(1, ping_interval=0.2, ping_timeout=0.5)
    sup.notify(0, "nothing")  # unknown events are ignored by the worker
    task = asyncio.create_task(sup.request(0, "block", seconds=30, timeout=None))
    await asyncio.wait_for(rec.changed.wait(), 5)
    assert rec.lost[0][1].startswith("unresponsive")
    with pytest.raises(ChannelClosed):
        await task
    await sup.wait_ready(0, timeout=10)


async def test_stop_closes_channels_and_workers_exit_cleanly(supervised):
    sup, rec = await supervised(2)
    procs = [h.process for h in sup.workers.values()]
    await sup.stop(grace=5)
    assert [p.returncode for p in procs] == [0, 0]  # they left on EOF, nobody had to kill them
    assert rec.lost == []


CONTROL = textwrap.dedent("""
    import asyncio, json, sys
    from webcall.workers.supervisor import Supervisor

    async def main():
        sup = Supervisor(2, media_host="127.0.0.1", ping_interval=0.5)
        await sup.start()
        print(json.dumps([h.pid for h in sup.workers.values()]), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


async def test_workers_die_with_a_sigkilled_control_process():
    control = subprocess.Popen([sys.executable, "-c", CONTROL], cwd=ROOT, stdout=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = await asyncio.wait_for(asyncio.to_thread(control.stdout.readline), 20)
        pids = json.loads(line)
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert all(int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == control.pid for p in pids)
        control.kill()
        control.wait()
        assert await wait_gone(pids, 3) == []
    finally:
        if control.poll() is None:
            control.kill()
            control.wait()
        control.stdout.close()


async def test_app_hook_ops_events_and_requests_to_the_control_process():
    loads: list[tuple[int, int]] = []
    got_both = asyncio.Event()

    def on_load(index: int, players: int) -> None:
        loads.append((index, players))
        if len(loads) == 2:
            got_both.set()

    sup = Supervisor(2, media_host="127.0.0.1", app="tests.unit.workers_apps:demo", ping_interval=0.5)
    sup.on_event("load", on_load)
    sup.on_request("lookup", lambda index, name: f"{name}@{index}")
    await sup.start()
    try:
        assert (await sup.request(1, "hello"))["app"] == "demo"
        assert await sup.request(0, "double", x=21) == 42
        assert await sup.request(1, "ask_control", name="cam") == "cam@1"
        await asyncio.wait_for(got_both.wait(), 5)
        assert sorted(loads) == [(0, 0), (1, 10)]
    finally:
        pids = [h.pid for h in sup.workers.values()]
        await sup.stop()
    assert await wait_gone(pids, 3) == []


async def test_a_worker_that_cannot_start_fails_start_and_leaves_nothing():
    lost: list[tuple[int, str]] = []
    sup = Supervisor(2, media_host="127.0.0.1", app="tests.unit.workers_apps:crash",
                     on_worker_lost=lambda i, r: lost.append((i, r)), start_timeout=10)
    seen: list[int] = []
    sup.on_worker_started = lambda i, h: seen.append(h.pid)
    with pytest.raises(ChannelClosed):
        await sup.start()
    assert sup.workers == {} and seen == []
    assert lost and all(r.startswith(("exited with status 1", "no hello")) for _, r in lost), lost
    await asyncio.sleep(0.3)
    assert sup.workers == {}  # and no replacement was started after stop
