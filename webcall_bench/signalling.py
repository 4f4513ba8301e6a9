"""A lean WCS signalling client for the load generator: one WebSocket, SDK-shaped messages.

It does what the official Web SDK does and nothing more: `connection` → `getUserData`, answer the
server's `ping`, send `publishStream` / `playStream`, and route `setRemoteSDP` and status events to the
stream they are about (by mediaSessionId). Hundreds of these run in one process, so it keeps no history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

TERMINAL = frozenset({"FAILED", "STOPPED", "UNPUBLISHED"})


class SignallingError(Exception):
    pass


def connection_payload() -> dict[str, Any]:
    """The `connection` object as SDK 2.0.276 sends it (spec §1.1)."""
    return {
        "appKey": "defaultApp",
        "mediaProviders": ["WebRTC", "MSE", "WSPlayer"],
        "clientVersion": "2.0",
        "clientOSVersion": "5.0 (X11; Linux x86_64)",
        "clientBrowserVersion": "Mozilla/5.0 (X11; Linux x86_64) webcall-bench",
        "msePacketizationVersion": 2,
        "clientInfo": {},
    }


def play_request(media_session_id: str, name: str, sdp: str) -> dict[str, Any]:
    """`playStream` as the SDK sends it (spec §4.1)."""
    return {
        "mediaSessionId": media_session_id, "name": name, "published": False, "hasVideo": True,
        "hasAudio": True, "status": "PENDING", "record": False, "width": 0, "height": 0,
        "mediaProvider": "WebRTC", "sdp": sdp, "custom": {}, "bitrate": 0, "minBitrate": 0, "maxBitrate": 0,
        "quality": 0, "constraints": {"audio": True, "video": True}, "transport": None, "cvoExtension": None,
    }


def publish_request(media_session_id: str, name: str, sdp: str, width: int, height: int) -> dict[str, Any]:
    """`publishStream` as the SDK sends it (spec §3.2)."""
    return {
        "mediaSessionId": media_session_id, "name": name, "published": True, "hasVideo": True,
        "hasAudio": True, "status": "PENDING", "record": False, "mediaProvider": "WebRTC", "sdp": sdp,
        "custom": {}, "bitrate": 0, "minBitrate": 0, "maxBitrate": 0,
        "constraints": {"audio": True, "video": {"width": width, "height": height}}, "cvoExtension": False,
    }


class StreamChannel:
    """What the server said about one mediaSessionId: its answer and its statuses."""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.status: str = "PENDING"
        self.info: str | None = None
        self.changed = asyncio.Event()
        self.on_terminal: Callable[[str, str | None], None] | None = None

    async def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.status in TERMINAL:
                raise SignallingError(f"stream {self.status} ({self.info}) while waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SignallingError(f"timed out after {timeout:.0f}s waiting for {what} (status {self.status})")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


class WcsConnection:
    """One signalling WebSocket, ESTABLISHED (getUserData received) once `open()` returns."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.channels: dict[str, StreamChannel] = {}
        self.closed = asyncio.Event()
        self._established = asyncio.Event()
        self._reader = asyncio.create_task(self._read_loop(), name="bench-wcs-reader")

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> WcsConnection:
        ws = await asyncio.wait_for(http.ws_connect(url, heartbeat=None, autoping=True,
                                                    max_msg_size=16 * 1024 * 1024), timeout)
        conn = cls(ws)
        try:
            await conn.send("connection", connection_payload())
            await asyncio.wait_for(conn._established.wait(), timeout)
        except BaseException:
            await conn.close()
            raise
        return conn

    def channel(self, media_session_id: str) -> StreamChannel:
        return self.channels.setdefault(media_session_id, StreamChannel())

    async def send(self, name: str, obj: Any) -> None:
        await self.ws.send_str(json.dumps({"message": name, "data": [obj]}))

    async def request_stream(self, kind: str, request: dict[str, Any], timeout: float) -> tuple[StreamChannel, str]:
        """Send publishStream/playStream and wait for the answer SDP (setRemoteSDP)."""
        channel = self.channel(request["mediaSessionId"])
        await self.send(kind, request)
        await channel.wait(lambda: channel.answer is not None, timeout, "setRemoteSDP")
        assert channel.answer is not None
        return channel, channel.answer

    async def _read_loop(self) -> None:
        try:
            async for frame in self.ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    msg = json.loads(frame.data)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                self._dispatch(msg)
                if msg.get("message") == "ping":
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self.send("pong", None)
        except Exception:  # a reset connection ends the reader like a close
            pass
        finally:
            self.closed.set()
            for channel in self.channels.values():
                if channel.status not in TERMINAL:
                    channel.status, channel.info = "FAILED", "signalling closed"
                    if channel.on_terminal is not None:
                        channel.on_terminal(channel.status, channel.info)
                channel.changed.set()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        name = msg.get("message")
        data = msg.get("data")
        first = data[0] if isinstance(data, list) and data else None
        if name == "getUserData":
            self._established.set()
        elif name == "setRemoteSDP" and isinstance(first, str) and len(data) > 1:
            channel = self.channels.get(first)
            if channel is not None:
                channel.answer = data[1]
                channel.changed.set()
        elif name in ("notifyStreamStatusEvent", "fail") and isinstance(first, dict):
            media_session_id = first.get("mediaSessionId", first.get("id"))
            channel = self.channels.get(media_session_id) if isinstance(media_session_id, str) else None
            status = first.get("status")
            if channel is not None and isinstance(status, str) and status not in ("RESIZE",):
                was_terminal = channel.status in TERMINAL
                channel.status, channel.info = status, first.get("info")
                channel.changed.set()
                if status in TERMINAL and not was_terminal and channel.on_terminal is not None:
                    channel.on_terminal(status, channel.info)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3.0)
        if not self._reader.done():
            self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def new_media_session_id() -> str:
    return str(uuid.uuid1())
