"""Server → client WebSocket text messages, written straight to the connection.

Why not `await ws.send_str()` from a writer task: every player gets a rate message each second and a ping
every few, and the queue, the task wake-up and aiohttp's coroutine around each message cost more than the
`send()` system call itself; on the control process of a 400-player server that overhead was a fifth of its
CPU. A server frame is simple (RFC 6455 §5.2: FIN + text opcode, a length, the payload, no mask), and
`send()` from a synchronous caller needs no task at all.

Rules that make this safe next to aiohttp, which still owns the handshake, reading, pongs and closing:
- aiohttp writes each frame with one synchronous `transport.write`, so its frames and ours never interleave
  mid-frame; it only writes control frames (pong, close) once the handshake is done, since every data
  message of the session goes through here.
- permessage-deflate (RFC 7692 §6) lets either side send any message uncompressed (RSV1 clear), and an
  uncompressed message does not touch the compression context; so our frames are valid whatever the client
  negotiated.
- Flow control is ours: a connection whose unsent bytes pass `limit` belongs to a client that stopped
  reading; `on_stalled` is called (the session closes) and nothing more is queued for it.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable

log = logging.getLogger("webcall.server")

FIN_TEXT = 0x81
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame carrying `payload` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((FIN_TEXT, n)) + payload
    if n < 1 << 16:
        return _LEN16.pack(FIN_TEXT, 126, n) + payload
    return _LEN64.pack(FIN_TEXT, 127, n) + payload


class Outbox:
    """Sends one WebSocket's text messages synchronously; drops the client when it stops reading."""

    def __init__(self, transport: asyncio.Transport, limit: int, on_stalled: Callable[[], None]) -> None:
        self.transport = transport
        self.limit = limit
        self.on_stalled = on_stalled
        self.stalled = False

    def send(self, text: str) -> None:
        if self.stalled or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.limit:
            self.stalled = True
            self.on_stalled()
            return
        try:
            payload = text.encode()
        except UnicodeEncodeError:  # our JSON is ASCII (ensure_ascii); a bug elsewhere must not end the session
            log.error("unencodable server message dropped")
            return
        self.transport.write(text_frame(payload))
