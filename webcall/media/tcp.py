"""ICE over TCP: the media port's TCP side (RFC 6544 passive host candidates, RFC 4571 framing).

A client behind a firewall that blocks UDP connects to this port and speaks exactly what it would send over
UDP — STUN checks, DTLS, SRTP — each datagram behind a 2-byte length (RFC 4571). Each accepted connection is
a `TcpLink`; the media port (port.py) treats a link like one more address: the link's first valid STUN check
binds it to the transport whose ufrag it names, and from then on its frames go to that transport.

Sending must never slow anyone else down: a link's write buffer is bounded (`WRITE_HIGH_WATER`); while it is
over the bound (asyncio's pause_writing) every packet for it is dropped, and a player's video then waits for
the next keyframe (media/consumer.py) so that what the slow reader gets is decodable. Nothing blocks: writes
go to asyncio's per-connection buffer.

Bad input is that connection's problem only: a frame longer than any datagram WebRTC sends, a first frame
that is not a valid STUN check, or a connection that stays unverified for `UNVERIFIED_TIMEOUT` closes the
connection, and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import Protocol, cast

log = logging.getLogger("webcall.media")

FRAME_HEADER = struct.Struct("!H")
MAX_FRAME = 2048  # WebRTC stacks keep datagrams under the path MTU over TCP too (~1200-1500 bytes)
WRITE_HIGH_WATER = 256 * 1024  # bytes queued for one connection before its packets are dropped (~1 s at 2 Mbit/s)
WRITE_LOW_WATER = 64 * 1024  # ... and when sending resumes
SEND_BUFFER = 64 * 1024  # the kernel's share (SO_SNDBUF, doubled by Linux): stale media is worse than none
UNVERIFIED_TIMEOUT = 10.0  # seconds a connection may stay without a valid STUN check
MAX_UNVERIFIED_LINKS = 256  # connections at once that have not passed a STUN check; more are closed at once


class FrameSink(Protocol):
    """What a link reports to (the media port)."""

    def frame_received(self, data: bytes, link: TcpLink) -> None: ...
    def link_opened(self, link: TcpLink) -> bool: ...
    def link_closed(self, link: TcpLink) -> None: ...


class TcpLink(asyncio.Protocol):
    """One ICE-TCP connection. Hashable by identity: it is a key of the port's address table."""

    def __init__(self, sink: FrameSink) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("0.0.0.0", 0)
        self.opened = time.monotonic()
        self.verified = False  # a STUN check on it passed (set by the port)
        self.closed = False
        self.congested = False  # over WRITE_HIGH_WATER: packets are dropped until it drains
        self.close_reason = ""
        self.refused = False  # closed for bad input (counted by the port)
        self._buffer = bytearray()
        self.frames_in = self.frames_out = 0
        self.dropped_out = 0  # packets not sent because the reader is slow

    def __repr__(self) -> str:
        return f"tcp:{self.peer[0]}:{self.peer[1]}"

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not checked with isinstance: uvloop's (webcall/eventloop.py) does not subclass
        # asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # media is latency-sensitive: no Nagle delay on small packets, no seconds of kernel backlog
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        if not self.sink.link_opened(self):
            self.close("too many unverified connections", refused=True)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            size = FRAME_HEADER.unpack_from(buffer, offset)[0]
            if size == 0 or size > MAX_FRAME:
                self.close(f"bad frame length {size}", refused=True)
                return
            if end - offset - 2 < size:
                break  # half a frame: the rest comes with the next read
            frame = bytes(buffer[offset + 2: offset + 2 + size])
            offset += 2 + size
            self.frames_in += 1
            self.sink.frame_received(frame, self)
            if self.closed:
                return
        if offset:
            del buffer[:offset]

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = self.close_reason or ("reset" if exc else "closed by peer")
        self.sink.link_closed(self)

    def pause_writing(self) -> None:
        self.congested = True

    def resume_writing(self) -> None:
        self.congested = False

    # --- used by the port and the transport --------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Queue one datagram, framed; False when it was dropped (closed, or the reader is too slow)."""
        if self.closed or self.congested or self.transport is None:
            self.dropped_out += 1
            return False
        self.transport.write(FRAME_HEADER.pack(len(data)) + data)
        self.frames_out += 1
        return True

    def close(self, reason: str = "closed", refused: bool = False) -> None:
        """Close after what is queued is written (a DTLS close alert, say)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.refused = refused
        if refused or reason == "server stopped":
            log.info("ice-tcp connection closed peer=%s:%d reason=%s", self.peer[0], self.peer[1], reason)
        if self.transport is not None:
            self.transport.close()


async def listen(sink: FrameSink, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    """Listen for ICE-TCP connections; returns the server and the bound port (useful with port 0)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: TcpLink(sink), host, port, reuse_address=True, backlog=256)
    return server, server.sockets[0].getsockname()[1]
