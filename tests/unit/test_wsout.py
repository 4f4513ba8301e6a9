"""Server text frames written straight to the connection (server/wsout.py), read by a parser written here
from RFC 6455 §5.2, and the stall rule on a real TCP connection whose peer stops reading."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from webcall.server.wsout import Outbox, text_frame


def parse_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(fin, opcode, payload) of each frame; server frames must not be masked."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b1 & 0x80 == 0, "a server frame is never masked"
        assert b0 & 0x70 == 0, "no RSV bits: the message is not compressed"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack_from("!H", data, i), i + 2
        elif n == 127:
            (n,), i = struct.unpack_from("!Q", data, i), i + 8
        out.append((b0 >> 7, b0 & 0x0F, data[i:i + n]))
        i += n
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = text_frame(payload)
    assert parse_frames(frame) == [(1, 1, payload)]
    # The shortest length form, as RFC 6455 requires.
    assert len(frame) - size == (2 if size < 126 else 4 if size < 65536 else 10)


async def test_outbox_writes_frames_and_drops_a_client_that_stops_reading() -> None:
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer = await asyncio.wait_for(accepted, 5)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stalls: list[int] = []
    outbox = Outbox(writer.transport, 64 * 1024, lambda: stalls.append(1))  # type: ignore[arg-type]

    outbox.send('{"message":"ping","data":[]}')
    await asyncio.sleep(0.05)
    client.settimeout(2)
    assert parse_frames(client.recv(4096)) == [(1, 1, b'{"message":"ping","data":[]}')]

    # The client stops reading: kernel buffers fill, then our unsent bytes pass the limit, once.
    big = "x" * 8192
    for _ in range(2000):
        outbox.send(big)
        if stalls:
            break
        await asyncio.sleep(0)
    assert stalls == [1] and outbox.stalled
    held = writer.transport.get_write_buffer_size()
    assert held > 64 * 1024
    outbox.send(big)  # nothing more is queued for it
    assert writer.transport.get_write_buffer_size() == held and stalls == [1]
    writer.close()
    client.close()
    server.close()
    await server.wait_closed()
