"""Raw WCS WebSocket API client (spec §0-§8) for end-to-end tests.

Message bookkeeping
-------------------
* Every text frame received is parsed and appended to ``client.messages`` (in arrival order).
  Frames that are not JSON are kept as ``{"message": None, "raw": text}``; binary frames as
  ``{"message": None, "binary": bytes}``.
* ``recv()`` walks ``messages`` with its own cursor: each call returns the next message,
  whatever it is.
* ``wait_for()`` searches ``messages`` (from ``since``, default 0, i.e. including messages that
  arrived before the call) for the first match that no earlier ``wait_for()`` returned, marks it
  as taken and returns it.  So two consecutive ``wait_for("ping")`` calls give two different
  pings, and concurrent waiters for different streams don't steal each other's messages.
  ``recv()`` and ``wait_for()`` are independent of each other.
* Server ``ping`` is answered with ``{"message":"pong","data":[null]}`` by the reader task while
  ``auto_pong`` is True (set it False to test the server's keepalive).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
Message = dict[str, Any]
Matcher = str | Iterable[str] | Callable[[Message], bool] | None


class WcsError(Exception):
    pass


class WcsClosed(WcsError):
    """The WebSocket is closed and no matching/unread message remains."""


class WcsTimeout(WcsError, TimeoutError):
    pass


def message_session_id(msg: Message) -> str | None:
    """The mediaSessionId a server message is about, whatever its shape:
    data[0].mediaSessionId (status events), data[0] as a string (setRemoteSDP,
    notifyAudioCodec) or data[0].id (availableStream, fail)."""
    data = msg.get("data")
    if not isinstance(data, list) or not data:
        return None
    first = data[0]
    if isinstance(first, str):
        return first
    if isinstance(first, dict):
        value = first.get("mediaSessionId", first.get("id"))
        return value if isinstance(value, str) else None
    return None


def message_payload(msg: Message) -> Any:
    """data[0], or None."""
    data = msg.get("data")
    return data[0] if isinstance(data, list) and data else None


def message_status(msg: Message) -> str | None:
    first = message_payload(msg)
    if isinstance(first, dict):
        status = first.get("status")
        return status if isinstance(status, str) else None
    return None


def make_matcher(
    match: Matcher = None, mediaSessionId: str | None = None, status: str | None = None
) -> Callable[[Message], bool]:
    """Build a predicate: `match` is a message name, a collection of names, a predicate or None
    (any message); `mediaSessionId` and `status` narrow it further."""
    if match is None:
        base: Callable[[Message], bool] = lambda m: True  # noqa: E731
    elif isinstance(match, str):
        base = lambda m: m.get("message") == match  # noqa: E731
    elif callable(match):
        base = match
    else:
        names = frozenset(match)
        base = lambda m: m.get("message") in names  # noqa: E731

    def predicate(msg: Message) -> bool:
        if not base(msg):
            return False
        if mediaSessionId is not None and message_session_id(msg) != mediaSessionId:
            return False
        if status is not None and message_status(msg) != status:
            return False
        return True

    return predicate


def _short(msg: Message, limit: int = 300) -> str:
    text = json.dumps(msg, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


class WcsClient:
    """One signalling WebSocket.  Create with ``await WcsClient.connect(url)`` (SDK-like
    handshake) or ``await WcsClient.open(url)`` (socket only, nothing sent)."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        session: aiohttp.ClientSession,
        owns_session: bool,
        url: str,
        auto_pong: bool = True,
    ) -> None:
        self.url = url
        self.ws = ws
        self.auto_pong = auto_pong
        self.messages: list[Message] = []  # everything received, in order
        self.received_at: list[float] = []  # time.monotonic() per entry of `messages`
        self.sent: list[Any] = []  # everything sent (decoded JSON, or raw text)
        self.auth_token: str | None = None
        self.user_data: dict[str, Any] | None = None  # getUserData payload
        self.pongs_sent = 0
        self.close_code: int | None = None
        self._session = session
        self._owns_session = owns_session
        self._taken: set[int] = set()  # indices of messages returned by wait_for()
        self._recv_cursor = 0
        self._cond = asyncio.Condition()
        self._closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read_loop(), name=f"wcs-reader {url}")

    # ---------------------------------------------------------------- construction

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        auto_pong: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
        headers: dict[str, str] | None = None,
    ) -> WcsClient:
        """Open the WebSocket only (no `connection` message)."""
        owns = session is None
        session = session or aiohttp.ClientSession()
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(
                    url,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    autoping=True,  # WS-level ping frames; WCS's own pings are JSON messages
                    heartbeat=None,
                    max_msg_size=16 * 1024 * 1024,
                    headers=headers,
                ),
                timeout,
            )
        except BaseException:
            if owns:
                await session.close()
            raise
        return cls(ws, session, owns, url, auto_pong=auto_pong)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        app_key: str = "defaultApp",
        media_providers: list[str] | None = None,
        custom: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        auto_pong: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
    ) -> WcsClient:
        """Open the socket, send `connection` like SDK 2.0.276 and wait for `getUserData`.
        `extra` is merged into the connection object (e.g. {"keepAlive": True, "authToken": t})."""
        client = await cls.open(url, auto_pong=auto_pong, timeout=timeout, session=session)
        try:
            await client.send("connection", connection_payload(app_key, media_providers, custom, extra))
            msg = await client.wait_for("getUserData", timeout=timeout)
            payload = message_payload(msg)
            if isinstance(payload, dict):
                client.user_data = payload
                token = payload.get("authToken")
                client.auth_token = token if isinstance(token, str) else None
        except BaseException:
            await client.close()
            raise
        return client

    # ---------------------------------------------------------------- sending

    async def send(self, name: str, obj: Any) -> None:
        """Send ``{"message": name, "data": [obj]}`` (the SDK's framing)."""
        payload = {"message": name, "data": [obj]}
        self.sent.append(payload)
        await self._send_text(json.dumps(payload))

    async def send_raw(self, text: str) -> None:
        """Send an arbitrary text frame (malformed-input tests)."""
        self.sent.append(text)
        await self._send_text(text)

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)
        async with self._send_lock:
            await self.ws.send_bytes(data)

    async def _send_text(self, text: str) -> None:
        async with self._send_lock:
            await self.ws.send_str(text)

    # ---------------------------------------------------------------- receiving

    async def _read_loop(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    try:
                        msg = json.loads(frame.data)
                        if not isinstance(msg, dict):
                            msg = {"message": None, "raw": frame.data}
                    except ValueError:
                        msg = {"message": None, "raw": frame.data}
                elif frame.type == aiohttp.WSMsgType.BINARY:
                    msg = {"message": None, "binary": frame.data}
                else:  # ERROR etc.
                    log.debug("ws frame %s %r", frame.type, frame.data)
                    continue
                await self._store(msg)
                if msg.get("message") == "ping" and self.auto_pong and not self.ws.closed:
                    try:
                        await self.send("pong", None)
                        self.pongs_sent += 1
                    except (ConnectionError, RuntimeError) as exc:
                        log.debug("pong failed: %s", exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection reset etc.: treat as close
            log.debug("reader ended: %r", exc)
        finally:
            self.close_code = self.ws.close_code
            self._closed.set()
            # wake all waiters so they can notice the close (may run after cancel)
            try:
                async with self._cond:
                    self._cond.notify_all()
            except RuntimeError:
                pass

    async def _store(self, msg: Message) -> None:
        async with self._cond:
            self.messages.append(msg)
            self.received_at.append(time.monotonic())
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """True once the socket is closed (by us or by the server)."""
        return self._closed.is_set()

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """The next message in arrival order (independent of wait_for)."""

        def ready() -> bool:
            return self._recv_cursor < len(self.messages) or self.closed

        await self._wait(ready, timeout, "any message")
        if self._recv_cursor < len(self.messages):
            msg = self.messages[self._recv_cursor]
            self._recv_cursor += 1
            return msg
        raise WcsClosed(f"connection closed (code {self.close_code})")

    def find(
        self,
        match: Matcher = None,
        mediaSessionId: str | None = None,
        status: str | None = None,
        since: int = 0,
    ) -> list[Message]:
        """All received messages matching (non-consuming, ignores what wait_for took)."""
        pred = make_matcher(match, mediaSessionId, status)
        return [m for m in self.messages[since:] if pred(m)]

    async def wait_for(
        self,
        match: Matcher = None,
        mediaSessionId: str | None = None,
        status: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        since: int = 0,
    ) -> Message:
        """First message (index >= since) matching and not yet returned by wait_for; waits for
        it up to `timeout` s.  Raises WcsTimeout, or WcsClosed if the socket closes first."""
        pred = make_matcher(match, mediaSessionId, status)
        found: list[int] = []
        scanned = since

        def ready() -> bool:
            nonlocal scanned
            while scanned < len(self.messages):
                i = scanned
                scanned += 1
                if i not in self._taken and pred(self.messages[i]):
                    found.append(i)
                    return True
            return self.closed

        what = f"{match!r} mediaSessionId={mediaSessionId} status={status}"
        await self._wait(ready, timeout, what)
        if found:
            self._taken.add(found[0])
            return self.messages[found[0]]
        raise WcsClosed(f"connection closed (code {self.close_code}) while waiting for {what}")

    async def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(ready), timeout)
            except TimeoutError:
                recent = "\n  ".join(_short(m) for m in self.messages[-8:])
                raise WcsTimeout(
                    f"timed out after {timeout}s waiting for {what}; last messages:\n  {recent}"
                ) from None

    async def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Wait until the server (or anyone) closes the socket; returns the close code."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            raise WcsTimeout(f"socket still open after {timeout}s") from None
        return self.close_code

    # ---------------------------------------------------------------- teardown

    async def close(self) -> None:
        """Close the socket, stop the reader task and (if we created it) the HTTP session.
        Idempotent; leaves no task behind."""
        try:
            if not self.ws.closed:
                try:
                    await asyncio.wait_for(self.ws.close(), 5.0)
                except (TimeoutError, ConnectionError, RuntimeError):
                    pass
            if not self._reader.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
                except TimeoutError:
                    self._reader.cancel()
                    await asyncio.gather(self._reader, return_exceptions=True)
        finally:
            if self._owns_session and not self._session.closed:
                await self._session.close()

    async def __aenter__(self) -> WcsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connection_payload(
    app_key: str = "defaultApp",
    media_providers: list[str] | None = None,
    custom: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `connection` object as SDK 2.0.276 sends it (keepAlive/authToken/custom only if set)."""
    payload: dict[str, Any] = {
        "appKey": app_key,
        "mediaProviders": list(media_providers or ["WebRTC", "MSE", "WSPlayer"]),
        "clientVersion": "2.0",
        "clientOSVersion": "5.0 (X11; Linux x86_64)",
        "clientBrowserVersion": "Mozilla/5.0 (X11; Linux x86_64) webcall-test-harness aiortc",
        "msePacketizationVersion": 2,
        "clientInfo": {},
    }
    if custom is not None:
        payload["custom"] = custom
    if extra:
        payload.update(extra)
    return payload
