"""What /proc says about a process: CPU time (user+sys), resident memory, and who owns a UDP port."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_clock(pid: int) -> int:
    """The clock id of `pid`'s CPU time, every thread's (glibc's clock_getcpuclockid: the kernel's
    CPUCLOCK_SCHED clock of the process, encoded as ~pid << 3 | 2; readable for any process)."""
    return ((~pid) << 3) | 2


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every thread of `pid` so far (not wall time).

    /proc/<pid>/stat counts in clock ticks (10 ms): over an 8 s window of a server at 1 % of a core that is
    ±12 % of the figure. So the total is the process's CPU clock (exact to the nanosecond, every thread ever
    run included) and only its split between user and system comes from the ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])  # utime, stime
    try:
        exact = time.clock_gettime(process_cpu_clock(pid))
    except OSError:  # gone meanwhile, or a kernel without the clock: the ticks then
        return user / CLK_TCK, system / CLK_TCK
    if user + system == 0:
        return exact, 0.0
    return exact * user / (user + system), exact * system / (user + system)


# What a server's threads are, by the name (comm) the thread gives itself; any other is "other threads" (Python's
# thread pools: transcoding, file writes).
THREAD_KINDS = {"wc-ingest": "ingest threads", "wc-fanout": "fan-out helpers"}
EVENT_LOOP = "event loop"  # a process's main thread
OTHER_THREADS = "other threads"


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """`pid`'s live threads: thread id -> (kind, CPU seconds so far). The kind is "event loop" for the main thread,
    THREAD_KINDS' name for the threads it names, else "other threads". Exact (schedstat: nanoseconds). A thread
    that has ended is not here: the process's own clock (cpu_times) still counts it."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            name = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        kind = EVENT_LOOP if task.name == str(pid) else THREAD_KINDS.get(name, OTHER_THREADS)
        out[int(task.name)] = (kind, ns / 1e9)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of `pid` so far."""
    return sum(cpu_times(pid))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def udp_port_owner(port: int) -> int | None:
    """The pid holding a UDP socket bound to `port` on this host (the server's media port), if any."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except OSError:
            continue
    return None


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release}


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of the whole machine so far, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The direct children of `pid`: /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN), else every process whose
    parent is `pid` (a scan of /proc)."""
    found: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    readable = False
    for task in tasks:
        try:
            found.update(int(x) for x in (task / "children").read_text().split())
            readable = True
        except OSError:
            continue
    if not readable:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and parent(int(entry.name)) == pid:
                found.add(int(entry.name))
    return sorted(found)


WORKER_MODULE = "webcall.workers.main"


def worker_index(pid: int) -> int | None:
    """The index of a media worker process (`python -m webcall.workers.main --index N ...`), else None."""
    argv = cmdline(pid)
    if WORKER_MODULE not in argv or "--index" not in argv:
        return None
    try:
        return int(argv[argv.index("--index") + 1])
    except (IndexError, ValueError):
        return None


def control_pid(pid: int) -> int:
    """The server's control process: `pid` itself, or its parent when `pid` is one of its media workers (the
    process behind a worker's media port)."""
    if worker_index(pid) is not None:
        up = parent(pid)
        if up is not None and up > 1:
            return up
    return pid


def server_processes(pid: int) -> list[tuple[str, int]]:
    """Every process of the server whose control process is `pid`: ("control", pid), then ("worker <i>", pid) by
    index, then any other child ("child", pid) — all of them do the server's work and count in its CPU."""
    procs = [("control", pid)]
    workers, others = [], []
    for child in children(pid):
        index = worker_index(child)
        if index is None:
            others.append(("child", child))
        else:
            workers.append((index, child))
    procs += [(f"worker {index}", child) for index, child in sorted(workers)]
    return procs + others
