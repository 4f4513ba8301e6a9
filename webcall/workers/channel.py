"""The control↔worker channel: requests with ids, replies, one-way events, and liveness pings.

Why a hand-made channel and not multiprocessing queues or shared objects: the two sides are separate
processes that must survive each other's death and must never share Python objects, so everything that
crosses is a JSON document in a length-prefixed frame over one stream socket (a socketpair inherited by the
worker). Bytes go base64 in a JSON string; the channel carries commands, not media (media goes by `relay`).

Two layers, so the framing is testable without I/O:

- the sans-I/O codec: `encode_frame(msg) -> bytes` and `FrameDecoder.feed(data) -> list[dict]`;
- `Channel`, the asyncio shell over a StreamReader/StreamWriter pair.

Frames (4-byte big-endian length, then UTF-8 JSON, one object):

    {"t": "req", "id": 7, "op": "hello", "args": {...}}
    {"t": "rep", "id": 7, "ok": true, "result": ...}
    {"t": "rep", "id": 7, "ok": false, "error": {"type": "ValueError", "message": "..."}}
    {"t": "evt", "event": "stats", "args": {...}}

Errors are values: a handler that raises produces an error reply (the caller gets `RemoteError`), an unknown
op an error reply, an unknown event is counted and ignored; none of them ends the channel. Only a broken
frame (bad length, bad JSON) closes it, because the byte stream can no longer be trusted.

A peer that stops answering is found two ways: every `request` has a deadline (`ChannelTimeout`), and
`Channel.start(ping_interval=..., ping_timeout=..., on_unresponsive=...)` sends a built-in ping whose missed
deadline calls `on_unresponsive` once. Pings are answered by the channel itself, not by a handler task, but
a peer whose event loop is blocked does not answer them either — that is the point.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("webcall.workers.channel")

MAX_FRAME = 16 * 1024 * 1024
PING_OP = "__ping__"
_HEADER = struct.Struct("!I")

Handler = Callable[..., Any]  # sync or async; called with the request's/event's args as keywords


class ChannelError(Exception):
    """Base of everything the channel raises."""


class ChannelClosed(ChannelError):
    """The channel is closed (by us, or the peer went away) while a request was pending or being sent."""


class ChannelTimeout(ChannelError, TimeoutError):
    """A request got no reply before its deadline."""


class FrameError(ChannelError):
    """The byte stream is not a valid sequence of frames; the channel cannot continue."""


class RemoteError(ChannelError):
    """The peer's handler failed (or the op is unknown): the error reply, raised on the requesting side."""

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


# -- sans-I/O codec -------------------------------------------------------------------------------------------


def encode_frame(msg: dict[str, Any]) -> bytes:
    """One frame: 4-byte big-endian length and the compact JSON of `msg`. Raises TypeError/ValueError when
    `msg` is not JSON-serialisable (bytes included: base64 them) and FrameError when it is too large."""
    body = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Bytes in, whole messages out. Keeps partial frames between calls to `feed`."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self.max_frame:
                raise FrameError(f"frame length {length} exceeds {self.max_frame}")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_HEADER.size:end])
            del self._buf[:end]
            try:
                msg = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise FrameError(f"frame is not JSON: {exc}") from None
            if not isinstance(msg, dict):
                raise FrameError("frame is not a JSON object")
            out.append(msg)
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


# -- asyncio shell --------------------------------------------------------------------------------------------


class Channel:
    """One end of a control↔worker channel. Both ends are the same class: either side may request and notify.

    Register handlers with `on_request(op, fn)` / `on_event(event, fn)` before `start()`; `fn(**args)` may be
    sync or async, and a request handler's return value (JSON) is the reply's result.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, name: str = "channel") -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._requests: dict[str, Handler] = {}
        self._events: dict[str, Handler] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._read_task: asyncio.Task[None] | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._on_closed: Callable[[str], None] | None = None
        self.close_reason = ""
        # counters, for tests and /metrics
        self.unknown_events = 0
        self.handler_errors = 0
        self.late_replies = 0

    @classmethod
    async def from_socket(cls, sock: socket.socket, *, name: str = "channel") -> Channel:
        """Wrap a connected stream socket (one end of `socket.socketpair()`, or an inherited fd)."""
        sock.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_FRAME)
        return cls(reader, writer, name=name)

    # -- registration ---------------------------------------------------------------------------------------

    def on_request(self, op: str, handler: Handler) -> None:
        self._requests[op] = handler

    def on_event(self, event: str, handler: Handler) -> None:
        self._events[event] = handler

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, *, ping_interval: float | None = None, ping_timeout: float | None = None,
              on_unresponsive: Callable[[], None] | None = None,
              on_closed: Callable[[str], None] | None = None) -> None:
        """Start reading. With `ping_interval`, ping the peer that often; a ping unanswered within
        `ping_timeout` (default: the interval) calls `on_unresponsive()` once and stops pinging.
        `on_closed(reason)` is called once when the channel closes for any reason (EOF, error, close())."""
        self._on_closed = on_closed
        self._read_task = asyncio.create_task(self._read_loop(), name=f"{self.name}-read")
        if ping_interval is not None:
            self.start_pinging(ping_interval, ping_timeout, on_unresponsive)

    def start_pinging(self, interval: float, timeout: float | None = None,
                      on_unresponsive: Callable[[], None] | None = None) -> None:
        """Ping the peer every `interval`; one unanswered within `timeout` calls `on_unresponsive()` once."""
        self._ping_task = asyncio.create_task(
            self._ping_loop(interval, timeout or interval, on_unresponsive), name=f"{self.name}-ping")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> str:
        await self._closed.wait()
        return self.close_reason

    def close(self, reason: str = "closed", *, abort: bool = False) -> None:
        """Close now: pending requests fail with ChannelClosed, handler tasks are cancelled, the socket closed —
        after what is queued has been written, or at once with `abort` (the peer is stopped or being killed:
        its unread buffer would keep the socket open)."""
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(f"{self.name}: {reason}"))
        self._pending.clear()
        current = asyncio.current_task()
        for task in (self._read_task, self._ping_task, *self._tasks):
            if task is not None and task is not current:
                task.cancel()
        if abort and self._writer.transport is not None:
            self._writer.transport.abort()
        else:
            self._writer.close()
        if self._on_closed is not None:
            try:
                self._on_closed(reason)
            except Exception:
                log.exception("%s: on_closed callback failed", self.name)

    # -- sending --------------------------------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        if self._closed.is_set() or self._writer.is_closing():
            raise ChannelClosed(f"{self.name}: {self.close_reason or 'closing'}")
        self._writer.write(encode_frame(msg))

    async def request(self, op: str, /, *, timeout: float | None = 5.0, **args: Any) -> Any:
        """Send `op(**args)` and return the peer's result. Raises ChannelTimeout after `timeout` seconds
        (None: wait forever), RemoteError when the peer's handler failed, ChannelClosed when the channel closes.
        (`timeout` is the deadline, so it cannot be an argument name of an op.)"""
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._send({"t": "req", "id": rid, "op": op, "args": args})
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                raise ChannelTimeout(f"{self.name}: no reply to {op!r} within {timeout}s") from None
        finally:
            self._pending.pop(rid, None)
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "exception never retrieved" warnings for abandoned requests

    def notify(self, event: str, /, **args: Any) -> None:
        """Send a one-way event (no reply). Raises ChannelClosed if the channel is closed."""
        self._send({"t": "evt", "event": event, "args": args})

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued in user space because the peer is not reading (a stopped peer makes this grow)."""
        transport = self._writer.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    # -- receiving ------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "eof"
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for msg in self._decoder.feed(data):
                    self._dispatch(msg)
        except asyncio.CancelledError:
            return
        except FrameError as exc:
            reason = f"bad frame: {exc}"
            log.warning("%s: %s", self.name, reason)
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        self.close(reason)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("t")
        if kind == "rep":
            fut = self._pending.get(msg.get("id"))  # type: ignore[arg-type]
            if fut is None or fut.done():
                self.late_replies += 1  # its request timed out or was abandoned
                return
            if msg.get("ok"):
                fut.set_result(msg.get("result"))
            else:
                err = msg.get("error") or {}
                fut.set_exception(RemoteError(str(err.get("type", "Error")), str(err.get("message", ""))))
        elif kind == "req":
            rid, op, args = msg.get("id"), msg.get("op"), msg.get("args") or {}
            if op == PING_OP:
                self._reply(rid, True, "pong")
                return
            handler = self._requests.get(op) if isinstance(op, str) else None
            if handler is None or not isinstance(args, dict):
                self._reply(rid, False, {"type": "UnknownOp", "message": f"no handler for {op!r}"})
                return
            self._run(self._handle_request(rid, op, handler, args))
        elif kind == "evt":
            event, args = msg.get("event"), msg.get("args") or {}
            handler = self._events.get(event) if isinstance(event, str) else None
            if handler is None or not isinstance(args, dict):
                self.unknown_events += 1
                return
            try:
                result = handler(**args)
            except Exception:
                self.handler_errors += 1
                log.exception("%s: event handler for %r failed", self.name, event)
                return
            if inspect.isawaitable(result):
                self._run(self._await_event(event, result))
        else:
            self.unknown_events += 1

    def _run(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_request(self, rid: Any, op: str, handler: Handler, args: dict[str, Any]) -> None:
        try:
            result = handler(**args)
            if inspect.isawaitable(result):
                result = await result
            encode_frame({"result": result})  # fail here, as an error reply, if the result is not JSON
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.handler_errors += 1
            self._reply(rid, False, {"type": type(exc).__name__, "message": str(exc)})
            return
        self._reply(rid, True, result)

    async def _await_event(self, event: str, aw: Awaitable[Any]) -> None:
        try:
            await aw
        except asyncio.CancelledError:
            raise
        except Exception:
            self.handler_errors += 1
            log.exception("%s: event handler for %r failed", self.name, event)

    def _reply(self, rid: Any, ok: bool, payload: Any) -> None:
        msg: dict[str, Any] = {"t": "rep", "id": rid, "ok": ok}
        msg["result" if ok else "error"] = payload
        try:
            self._send(msg)
        except ChannelClosed:
            pass

    async def _ping_loop(self, interval: float, timeout: float, on_unresponsive: Callable[[], None] | None) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.request(PING_OP, timeout=timeout)
                except ChannelTimeout:
                    log.warning("%s: peer unresponsive (no pong within %.1fs)", self.name, timeout)
                    if on_unresponsive is not None:
                        on_unresponsive()
                    return
                except ChannelClosed:
                    return
        except asyncio.CancelledError:
            return
