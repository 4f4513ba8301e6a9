"""The second WebSocket of MSE and WSPlayer players (spec §11): binary media out, `ping` answered.

A socket whose first message is `connectMediaTransport {authToken}` is a media socket: the token names a WCS
session (the authToken of getUserData is the session id) and the session binds the socket to its most recent
MSE/WSPlayer playback that has none yet (wcs/session.py). An unknown or missing token, or a session with nothing
to bind, closes this socket with a reason (close code 4404/4400) and touches nothing else.

Chunks go out through a bounded buffer drained by one writer task: a client that stops reading fills it, and
`send_chunks` says so (False), so its playback ends (FAILED) while the stream and its other players go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import logging
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

log = logging.getLogger("webcall.server")

BUFFER_LIMIT = 4 * 1024 * 1024  # bytes queued for one media socket (≈ 15 s of 2 Mbit/s): more = not reading
SEND_BUFFER = 256 * 1024  # the media socket's kernel send buffer (SO_SNDBUF)
CLOSE_BAD_REQUEST = 4400
CLOSE_UNKNOWN = 4404


def media_token(text: str) -> tuple[bool, str | None]:
    """(is this a connectMediaTransport message, its authToken if any)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):  # (nested too deep: the session's parser answers it)
        return False, None
    if not isinstance(obj, dict) or obj.get("message") != "connectMediaTransport":
        return False, None
    data = obj.get("data")
    first = data[0] if isinstance(data, list) and data else None
    token = first.get("authToken") if isinstance(first, dict) else None
    return True, token if isinstance(token, str) and token else None


class MediaSocket:
    def __init__(self, ws: web.WebSocketResponse, limit: int | None = None) -> None:
        self.ws = ws
        self.limit = limit if limit is not None else BUFFER_LIMIT  # read at creation: tests lower it
        self._queue: deque[bytes] = deque()
        self.buffered = 0
        self.sent_bytes = 0
        self._wake = asyncio.Event()
        self._closing: str | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="media-socket-writer")

    def send_chunks(self, data: list[bytes], joined: bool) -> bool:
        """Queue `data` as one WebSocket frame (`joined`: MSE records go back to back) or one frame each
        (WSPlayer: one packet per frame). False when the buffer is full: the client is not reading."""
        frames = [b"".join(data)] if joined else data
        size = sum(len(f) for f in frames)
        if self.buffered + size > self.limit:
            return False
        self._queue.extend(frames)
        self.buffered += size
        self._wake.set()
        return True

    def send_text(self, text: str) -> None:
        self._queue.append(text.encode())  # type: ignore[arg-type]
        self._wake.set()

    def close(self, reason: str) -> None:
        if self._closing is None:
            self._closing = reason
            self._wake.set()

    async def _write(self) -> None:
        ws = self.ws
        try:
            while True:
                while self._queue:
                    frame = self._queue.popleft()
                    self.buffered -= len(frame)
                    await ws.send_bytes(frame)
                    self.sent_bytes += len(frame)
                if self._closing is not None:
                    break
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            await ws.close(code=1000, message=(self._closing or "closed").encode()[:120])

    async def wait_writer(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._writer.cancel()


async def serve(ws: web.WebSocketResponse, hub: Any, token: str | None, transport: Any = None) -> None:
    """Run one media socket to its end."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:  # the kernel must not hide megabytes of backlog (latency) from our bounded buffer
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    if token is None:
        await ws.close(code=CLOSE_BAD_REQUEST, message=b"connectMediaTransport without authToken")
        return
    session = hub.find_session(token)
    if session is None:
        log.info("media socket refused: unknown authToken")
        await ws.close(code=CLOSE_UNKNOWN, message=b"Unknown authToken")
        return
    media = MediaSocket(ws)
    playback = session.bind_media_transport(media)
    if playback is None:
        log.info("media socket refused session=%s: no MSE/WSPlayer stream waiting", session.id)
        media.close("No MSE or WSPlayer stream to bind")
        await media.wait_writer(2.0)
        return
    try:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                try:
                    message = json.loads(frame.data).get("message")
                except (ValueError, AttributeError):
                    continue
                if message == "ping":
                    await ws.send_str('{"message":"pong"}')
            if media._closing is not None:
                break
    finally:
        playback.unbind(media)
        media.close("closed")
        await media.wait_writer(2.0)
