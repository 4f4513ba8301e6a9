"""Start N media worker processes, keep one Channel to each, replace the ones that are lost.

How workers are started, and why: `asyncio.create_subprocess_exec(sys.executable, "-m",
"webcall.workers.main", ..., pass_fds=(fd,))` with one end of a `socket.socketpair()` as the channel, rather
than `multiprocessing`:

- a fresh interpreter (exec, not fork): nothing of the control process — its event loop, threads, aiohttp
  sockets, OpenSSL state — is copied into a worker, which `fork` would do and `spawn` avoids only by
  pickling and re-importing through multiprocessing's own machinery;
- the channel is a plain inherited fd speaking our own frames, so no pickling, no resource tracker, no
  hidden manager process, and `ps` shows exactly what each worker is;
- the event loop's child watcher tells us when a worker dies (`proc.wait()`), with its exit status.

Faults, reported through `on_worker_lost(index, reason)` and answered by a new worker at the same index and
port (after the old one is reaped, so the port is free):

- the process exits or is killed (SIGKILL, crash): `proc.wait()` returns;
- it stops answering (SIGSTOP, a blocked loop): the channel's ping misses its deadline — the worker is
  SIGKILLed, then replaced;
- its channel closes while the process lives: killed, then replaced.

A worker that dies young is restarted with a growing delay (`restart_delay` doubling up to
`max_restart_delay`), so a worker that crashes at start cannot spin the CPU.

No orphans: workers set PR_SET_PDEATHSIG (see `main`) and exit on channel EOF. PR_SET_PDEATHSIG fires when
the *thread* that forked the worker exits; create_subprocess_exec forks from the event loop's thread, so run
the supervisor on a loop that lives as long as the process (the main thread's, normally).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .channel import Channel, ChannelClosed, ChannelError

log = logging.getLogger("webcall.workers.supervisor")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding `webcall/`

LostCallback = Callable[[int, str], Any]
StartedCallback = Callable[[int, "WorkerHandle"], Any]


def resolve_worker_count(value: str | int) -> int:
    """`--workers`: "auto" is the number of CPUs this process may run on; otherwise a positive integer."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return len(os.sched_getaffinity(0))
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"workers must be 'auto' or a positive integer, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"workers must be 'auto' or a positive integer, not {value!r}")
    return value


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass(eq=False)
class WorkerHandle:
    """One running worker process. Replaced, not reused, when the worker is lost."""

    index: int
    media_port: int
    process: asyncio.subprocess.Process
    channel: Channel
    started: float = field(default_factory=time.monotonic)
    hello: dict[str, Any] = field(default_factory=dict)
    lost: str = ""  # the reason, once lost

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Owns `count` workers, indexes 0..count-1; worker i gets media port `media_port + i` (0 stays 0)."""

    def __init__(self, count: int, *, media_host: str = "0.0.0.0", media_port: int = 0,
                 on_worker_lost: LostCallback | None = None, on_worker_started: StartedCallback | None = None,
                 ping_interval: float = 1.0, ping_timeout: float = 3.0, start_timeout: float = 15.0,
                 restart: bool = True, restart_delay: float = 0.1, max_restart_delay: float = 5.0,
                 app: str = "", extra_args: Sequence[str] = (), python: str = sys.executable,
                 env: dict[str, str] | None = None) -> None:
        self.count = resolve_worker_count(count)
        self.media_host = media_host
        self.media_port = media_port
        self.on_worker_lost = on_worker_lost
        self.on_worker_started = on_worker_started
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.start_timeout = start_timeout
        self.restart = restart
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.app = app
        self.extra_args = list(extra_args)
        self.python = python
        self.env = env
        self.workers: dict[int, WorkerHandle] = {}
        self.losses: list[tuple[int, str]] = []  # every loss, in order (for /metrics and tests)
        self._events: dict[str, Callable[..., Any]] = {}
        self._requests: dict[str, Callable[..., Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._delays: dict[int, float] = {}
        self._ready: dict[int, asyncio.Event] = {}
        self._stopping = False

    # -- wiring ---------------------------------------------------------------------------------------------

    def on_event(self, event: str, handler: Callable[..., Any]) -> None:
        """`handler(index, **args)` for events any worker sends (set before `start`)."""
        self._events[event] = handler

    def on_request(self, op: str, handler: Callable[..., Any]) -> None:
        """`handler(index, **args)` answers requests any worker sends to the control process."""
        self._requests[op] = handler

    def port_of(self, index: int) -> int:
        return self.media_port + index if self.media_port else 0

    def channel(self, index: int) -> Channel:
        """The live channel of worker `index`; raises ChannelClosed while it is lost and being replaced."""
        handle = self.workers.get(index)
        if handle is None or handle.lost:
            raise ChannelClosed(f"worker {index} is not running")
        return handle.channel

    async def request(self, index: int, op: str, /, *, timeout: float | None = 5.0, **args: Any) -> Any:
        return await self.channel(index).request(op, timeout=timeout, **args)

    def notify(self, index: int, event: str, /, **args: Any) -> None:
        self.channel(index).notify(event, **args)

    async def wait_ready(self, index: int, timeout: float | None = None) -> WorkerHandle:
        """Wait until worker `index` (or its replacement) has answered `hello`."""
        await asyncio.wait_for(self._ready[index].wait(), timeout)
        return self.workers[index]

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait for all their `hello`s. Raises if one cannot start (none are left)."""
        self._stopping = False
        for i in range(self.count):
            self._ready[i] = asyncio.Event()
        try:
            await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace: float = 3.0) -> None:
        """Close every channel (workers exit on EOF), wait `grace` seconds, SIGKILL what is left, reap all."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        handles = list(self.workers.values())
        for h in handles:
            h.channel.close("supervisor stopping")
        for h in handles:
            try:
                await asyncio.wait_for(h.process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    h.process.kill()
                await h.process.wait()
        self.workers.clear()

    async def _spawn(self, index: int) -> WorkerHandle:
        ours, theirs = socket.socketpair()
        port = self.port_of(index)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        argv = [self.python, "-m", "webcall.workers.main", "--index", str(index),
                "--channel-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid()),
                "--media-host", self.media_host, "--media-port", str(port), *self.extra_args]
        if self.app:
            argv += ["--app", self.app]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, pass_fds=(theirs.fileno(),), env=env,
                                                        stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        channel = await Channel.from_socket(ours, name=f"control->worker{index}")
        handle = WorkerHandle(index=index, media_port=port, process=proc, channel=channel)
        self.workers[index] = handle
        for event, fn in self._events.items():
            channel.on_event(event, _bind_index(fn, index))
        for op, fn in self._requests.items():
            channel.on_request(op, _bind_index(fn, index))
        channel.start(on_closed=lambda reason: self._on_channel_closed(handle, reason))
        self._spawn_task(self._watch(handle), f"watch-worker{index}")
        try:
            handle.hello = await channel.request("hello", timeout=self.start_timeout)
        except ChannelError as exc:
            self._lose(handle, f"no hello: {exc}")
            raise
        # Pings start once the worker is up: a busy machine may take seconds to import and bind a new worker,
        # which the start timeout covers; a worker that stops answering after that is lost.
        channel.start_pinging(self.ping_interval, self.ping_timeout,
                              lambda: self._lose(handle, f"unresponsive: no pong within {self.ping_timeout:g}s"))
        log.info("worker %d started: pid %d, media port %d", index, proc.pid, port)
        self._ready[index].set()
        if self.on_worker_started is not None:
            self._call(self.on_worker_started, index, handle)
        return handle

    async def _watch(self, handle: WorkerHandle) -> None:
        rc = await handle.process.wait()
        self._lose(handle, describe_exit(rc))

    def _on_channel_closed(self, handle: WorkerHandle, reason: str) -> None:
        if not self._stopping and not handle.lost:
            self._spawn_task(self._closed_channel(handle, reason))

    async def _closed_channel(self, handle: WorkerHandle, reason: str) -> None:
        """EOF usually means the process died: give its exit status a moment to arrive, it says more."""
        try:
            rc = await asyncio.wait_for(asyncio.shield(handle.process.wait()), 1.0)
        except TimeoutError:
            self._lose(handle, f"channel closed: {reason}")
        else:
            self._lose(handle, describe_exit(rc))

    def _lose(self, handle: WorkerHandle, reason: str) -> None:
        """The one place a worker is declared lost: kill, report once, schedule the replacement."""
        if handle.lost or self._stopping:
            return
        handle.lost = reason
        log.warning("worker %d (pid %d) lost: %s", handle.index, handle.pid, reason)
        if handle.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                handle.process.kill()  # SIGKILL also ends a SIGSTOPped process
        handle.channel.close(f"worker lost: {reason}", abort=True)
        self._ready[handle.index].clear()
        self.losses.append((handle.index, reason))
        if self.on_worker_lost is not None:
            self._call(self.on_worker_lost, handle.index, reason)
        if self.restart:
            self._spawn_task(self._replace(handle), f"replace-worker{handle.index}")

    async def _replace(self, old: WorkerHandle) -> None:
        index = old.index
        young = time.monotonic() - old.started < 5.0
        delay = min(self._delays.get(index, self.restart_delay / 2) * 2, self.max_restart_delay) if young else self.restart_delay
        self._delays[index] = delay
        await old.process.wait()  # reaped: its port is free again
        await asyncio.sleep(delay)
        if self._stopping or self.workers.get(index) is not old:
            return
        try:
            await self._spawn(index)
        except ChannelError:
            pass  # _spawn declared it lost, which scheduled the next attempt
        except OSError as exc:
            log.error("worker %d: cannot start a replacement: %s", index, exc)

    def _spawn_task(self, coro: Any, name: str = "") -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            result = fn(*args)
        except Exception:
            log.exception("supervisor callback %r failed", fn)
            return
        if inspect.isawaitable(result):
            self._spawn_task(result, "supervisor-callback")


def _bind_index(fn: Callable[..., Any], index: int) -> Callable[..., Any]:
    def bound(**args: Any) -> Any:
        return fn(index, **args)
    return bound
