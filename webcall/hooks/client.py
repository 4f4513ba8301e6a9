"""REST hooks over HTTP (spec §13): one `Hooks` per server, one `HookClient` per WCS client.

* ``await client.invoke(method, obj)`` → `Decision` for the invocations that can deny. It never waits longer
  than the hook timeout, whatever the backend does.
* ``client.event(method, obj)`` queues an event that cannot deny and returns at once. One background task
  per client posts its events in order; a full queue drops the event (counted in `HookStats`).
* ``await client.keep_alive(obj)`` posts StreamKeepAliveEvent: False means "terminate the stream".

A client whose appKey has no URL makes no request at all: every invocation is allowed.
Each appKey's backend gets its own HTTP connection pool, so a backend that hangs cannot hold up another app.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import policy as p
from .policy import Decision, RestClientConfig

log = logging.getLogger("webcall.hooks")

# 3 s, not WCS's 15 s (rest_request_timeout): a user who clicked Publish or Play is looking at a PENDING
# stream while the hook runs. A healthy backend answers in tens of milliseconds; 3 s still covers a slow
# database query or a GC pause, and a dead backend is reported (denied, or allowed with restOnError LOG)
# while the user is still waiting rather than after they have given up.
DEFAULT_TIMEOUT = 3.0
DEFAULT_QUEUE_SIZE = 64
POOL_LIMIT = 256  # connections per backend; the timeout also bounds the wait for a free one


def default_node_id() -> str:
    return f"webcall@{socket.gethostname()}"


@dataclass
class HookSettings:
    urls: dict[str, str] = field(default_factory=dict)  # appKey -> backend base URL (POST <url>/<method>)
    timeout: float = DEFAULT_TIMEOUT
    secret: str = ""  # non-empty: sign every request (Authorization: WCS <HMAC-MD5 hex>)
    queue_size: int = DEFAULT_QUEUE_SIZE  # events waiting per client before new ones are dropped
    node_id: str = field(default_factory=default_node_id)

    @classmethod
    def from_config(cls, config: Any) -> HookSettings:
        """From webcall.server.config.Config (hook_urls(), hook_timeout, hook_secret, hook_queue_size)."""
        return cls(urls=config.hook_urls(), timeout=config.hook_timeout, secret=config.hook_secret,
                   queue_size=config.hook_queue_size)


@dataclass
class HookStats:
    """Counters for /metrics. Keys are (appKey, method[, outcome])."""

    invocations: collections.Counter = field(default_factory=collections.Counter)  # outcome: allowed|denied
    errors: collections.Counter = field(default_factory=collections.Counter)  # no usable answer
    events_posted: collections.Counter = field(default_factory=collections.Counter)
    events_failed: collections.Counter = field(default_factory=collections.Counter)  # error or non-200
    events_dropped: collections.Counter = field(default_factory=collections.Counter)  # queue full or closed
    keep_alive_terminations: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.events_dropped.values())


class Hooks:
    """Server-wide: the per-app URLs, one HTTP pool per app, the counters and every client's event task."""

    def __init__(self, settings: HookSettings, stats: HookStats | None = None) -> None:
        self.settings = settings
        self.stats = stats or HookStats()
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._workers: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.urls)

    def url_for(self, app_key: str) -> str | None:
        return self.settings.urls.get(app_key) or None

    def client(self, app_key: str | None, session_id: str) -> HookClient:
        return HookClient(self, app_key or p.DEFAULT_APP_KEY, session_id)

    async def post(self, app_key: str, method: str, body: bytes) -> tuple[int, bytes]:
        """POST <url>/<method>; (status, body). Raises TimeoutError or aiohttp.ClientError/OSError."""
        url = self.url_for(app_key)
        assert url is not None
        session = self._sessions.get(app_key)
        if session is None or session.closed:
            session = self._sessions[app_key] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL_LIMIT),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        headers = {"Content-Type": "application/json"}
        if self.settings.secret:
            headers["Authorization"] = p.sign(body, self.settings.secret)
        async with asyncio.timeout(self.settings.timeout):
            async with session.post(url.rstrip("/") + "/" + method, data=body, headers=headers,
                                    allow_redirects=False) as response:
                raw = await response.content.read(p.MAX_ANSWER_BYTES + 1)
                return response.status, raw

    def _track(self, task: asyncio.Task[None]) -> None:
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for the closed clients' queued events to be posted (graceful shutdown)."""
        if self._workers:
            await asyncio.wait(list(self._workers), timeout=timeout)

    async def close(self) -> None:
        for task in list(self._workers):
            task.cancel()
        for task in list(self._workers):
            try:
                await task
            except asyncio.CancelledError:
                pass
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


class HookClient:
    """One WCS client's hooks: its restClientConfig (from the connect answer) and its event queue."""

    def __init__(self, hooks: Hooks, app_key: str, session_id: str) -> None:
        self.hooks = hooks
        self.app_key = app_key
        self.session_id = session_id
        self.config: RestClientConfig = p.DEFAULT_CONFIG
        self.enabled = hooks.url_for(app_key) is not None
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._deadline = 0.0

    # --- invocations --------------------------------------------------------------------------------

    def policy(self, method: str) -> p.MethodPolicy:
        return self.config.policy(method)

    def _body(self, method: str, obj: Mapping[str, Any]) -> bytes | None:
        body = p.request_body(dict(obj), node_id=self.hooks.settings.node_id, app_key=self.app_key,
                              session_id=self.session_id, policy=self.policy(method))
        return None if body is None else p.encode_body(body)

    async def invoke(self, method: str, obj: Mapping[str, Any]) -> Decision:
        """Ask the backend whether `method` may go on with the client's object `obj`."""
        if not self.enabled:
            return p.ALLOWED_WITHOUT_REQUEST
        policy = self.policy(method)
        body = self._body(method, obj)
        if body is None:  # restPolicy DISABLE
            return p.ALLOWED_WITHOUT_REQUEST
        stats = self.hooks.stats
        try:
            status, raw = await self.hooks.post(self.app_key, method, body)
        except TimeoutError:
            decision = p.decide_error("timeout", policy)
        except (aiohttp.ClientError, OSError) as exc:
            decision = p.decide_error(f"connection error: {type(exc).__name__}", policy)
        else:
            if method == p.CONNECT:
                decision, self.config = p.decide_connect(status, raw)
            else:
                decision = p.decide(status, raw, policy)
        if decision.error is not None:
            stats.errors[(self.app_key, method)] += 1
            log.warning("hook %s app=%s session=%s: %s (%s)", method, self.app_key, self.session_id,
                        decision.error, "allowed: restOnError LOG" if decision.allowed else "denied")
        elif not decision.allowed:
            log.info("hook %s app=%s session=%s denied: %s %s", method, self.app_key, self.session_id,
                     decision.status, decision.info)
        stats.invocations[(self.app_key, method, "allowed" if decision.allowed else "denied")] += 1
        return decision

    def apply(self, method: str, obj: dict[str, Any], decision: Decision) -> dict[str, Any]:
        """The client's object after the backend's answer (restPolicy OVERWRITE with restOverwrite)."""
        return p.apply_answer(obj, decision, self.policy(method))

    def client_view(self, method: str, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` less the method's clientExclude fields, for what is sent back to the client."""
        return p.client_view(obj, self.policy(method))

    # --- keep-alive ---------------------------------------------------------------------------------

    async def keep_alive(self, obj: Mapping[str, Any]) -> bool:
        """StreamKeepAliveEvent for one stream: False when the backend answered 403 (terminate it)."""
        if not self.enabled:
            return True
        body = self._body(p.STREAM_KEEP_ALIVE_EVENT, obj)
        if body is None:
            return True
        try:
            status, _ = await self.hooks.post(self.app_key, p.STREAM_KEEP_ALIVE_EVENT, body)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("hook %s app=%s: %s", p.STREAM_KEEP_ALIVE_EVENT, self.app_key, type(exc).__name__)
            return True
        keep = p.keep_alive_decision(status)
        if not keep:
            self.hooks.stats.keep_alive_terminations += 1
        return keep

    # --- events -------------------------------------------------------------------------------------

    def event(self, method: str, obj: Mapping[str, Any]) -> bool:
        """Queue an event that cannot deny; never blocks. False if it was dropped (queue full or closed)."""
        if not self.enabled:
            return False
        body = self._body(method, obj)
        if body is None:
            return False
        if self._closing or len(self._queue) >= self.hooks.settings.queue_size:
            self.hooks.stats.events_dropped[(self.app_key, method)] += 1
            return False
        self._queue.append((method, body))
        self._wake.set()
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"hooks-{self.session_id}")
            self.hooks._track(self._worker)
        return True

    @property
    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """No more events. Those queued are still posted for one hook timeout at most, then dropped."""
        if self._closing:
            return
        self._closing = True
        if self._worker is None:
            return
        self._deadline = asyncio.get_running_loop().time() + self.hooks.settings.timeout
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stats = self.hooks.stats
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._closing and loop.time() >= self._deadline:
                for method, _ in self._queue:
                    stats.events_dropped[(self.app_key, method)] += 1
                self._queue.clear()
                return
            method, body = self._queue.popleft()
            try:
                status, _ = await self.hooks.post(self.app_key, method, body)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                stats.events_failed[(self.app_key, method)] += 1
                log.debug("hook event %s app=%s: %s", method, self.app_key, type(exc).__name__)
                continue
            if status == 200:
                stats.events_posted[(self.app_key, method)] += 1
            else:
                stats.events_failed[(self.app_key, method)] += 1


async def keep_alive_loop(client: HookClient, interval: float, get_obj: Callable[[], Mapping[str, Any] | None],
                          terminate: Callable[[str], None]) -> None:
    """Run as a task per published stream: every `interval` s post StreamKeepAliveEvent with `get_obj()`.

    Ends when `get_obj()` returns None (the stream is gone) or after calling
    ``terminate("Terminated by keep-alive")`` on a 403. Cancel it when the stream stops.
    """
    if interval <= 0 or not client.enabled:
        return
    while True:
        await asyncio.sleep(interval)
        obj = get_obj()
        if obj is None:
            return
        if not await client.keep_alive(obj):
            terminate(p.TERMINATED_BY_KEEP_ALIVE)
            return
