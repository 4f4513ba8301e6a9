"""A UDP-to-ICE-TCP shim: lets a UDP-only WebRTC client (aiortc, which has no ICE-TCP) reach the server over TCP.

The client is pointed at the shim's UDP port (a test rewrites the server's announced UDP candidate); for each
client address the shim opens one TCP connection to the server's ICE-TCP port and carries every datagram in
an RFC 4571 frame (2-byte length), both ways. The server sees nothing but an ICE-TCP client: STUN, DTLS and
SRTP over TCP. The framing here is written from RFC 4571, not taken from the server.

`pause_reading()` stops reading what the server sends (a slow TCP reader), with a small receive buffer so the
server's side fills up quickly; `resume_reading()` drains again.
"""

from __future__ import annotations

import asyncio
import socket
import struct

Address = tuple[str, int]
_LEN = struct.Struct("!H")


class _Connection(asyncio.Protocol):
    def __init__(self, shim: TcpShim, client: Address) -> None:
        self.shim, self.client = shim, client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = asyncio.Event()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            (size,) = _LEN.unpack_from(self.buffer, 0)
            if len(self.buffer) < 2 + size:
                return
            frame = bytes(self.buffer[2:2 + size])
            del self.buffer[:2 + size]
            self.shim.frames_down += 1
            self.shim.to_client(frame, self.client)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.closed.set()


class TcpShim(asyncio.DatagramProtocol):
    def __init__(self, target: Address, recv_buffer: int = 0) -> None:
        self.target = target
        self.recv_buffer = recv_buffer  # SO_RCVBUF of the TCP sockets (0: the system's)
        self.front: asyncio.DatagramTransport | None = None
        self.connections: dict[Address, _Connection] = {}
        self.pending: dict[Address, list[bytes]] = {}
        self.frames_up = self.frames_down = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self.front.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        connection = self.connections.get(addr)
        if connection is None:
            self.pending.setdefault(addr, []).append(data)
            if len(self.pending[addr]) == 1:
                asyncio.get_running_loop().create_task(self._open(addr))
        elif connection.transport is not None and not connection.transport.is_closing():
            self.frames_up += 1
            connection.transport.write(_LEN.pack(len(data)) + data)

    async def _open(self, client: Address) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.recv_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.recv_buffer)
        sock.setblocking(False)
        await loop.sock_connect(sock, self.target)
        connection = _Connection(self, client)
        await loop.create_connection(lambda: connection, sock=sock)
        self.connections[client] = connection
        for data in self.pending.pop(client, []):
            self.datagram_received(data, client)

    def to_client(self, data: bytes, client: Address) -> None:
        if self.front is not None:
            self.front.sendto(data, client)

    def pause_reading(self) -> None:
        for connection in self.connections.values():
            if connection.transport is not None:
                connection.transport.pause_reading()

    def resume_reading(self) -> None:
        for connection in self.connections.values():
            if connection.transport is not None:
                connection.transport.resume_reading()

    def close(self) -> None:
        for connection in self.connections.values():
            if connection.transport is not None:
                connection.transport.close()
        if self.front is not None:
            self.front.close()
