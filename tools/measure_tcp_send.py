"""Per-packet cost of sending one 1200-byte packet to an ICE-TCP player (webcall/media/tcp.py: `TcpLink.send`, the
RFC 4571 frame and asyncio's write) against a UDP `sendto`, on loopback, with a reader draining the other end (in
this process: its cost is included in both figures). Not part of the suite:

    PYTHONPATH=. .venv/bin/python tools/measure_tcp_send.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from webcall.media import tcp

PACKETS = 20000
YIELD_EVERY = 50  # the event loop runs between packets in the server too


class _Sink:
    def link_opened(self, link: tcp.TcpLink) -> bool:
        return True

    def frame_received(self, data: bytes, link: tcp.TcpLink) -> None:
        pass

    def link_closed(self, link: tcp.TcpLink) -> None:
        pass


async def main() -> None:
    links: list[tcp.TcpLink] = []
    sink = _Sink()
    sink.link_opened = lambda link: links.append(link) is None  # type: ignore[method-assign]
    server, port = await tcp.listen(sink, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def drain() -> None:
        while await reader.read(1 << 16):
            pass

    draining = asyncio.create_task(drain())
    await asyncio.sleep(0.1)
    link = links[0]
    data = os.urandom(1200)

    sent = 0
    started = time.perf_counter()
    for i in range(PACKETS):
        sent += link.send(data)
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    tcp_us = (time.perf_counter() - started) / PACKETS * 1e6

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    address = target.getsockname()
    started = time.perf_counter()
    for i in range(PACKETS):
        try:
            udp.sendto(data, address)
        except BlockingIOError:
            pass
        if i % YIELD_EVERY == 0:
            await asyncio.sleep(0)
    udp_us = (time.perf_counter() - started) / PACKETS * 1e6

    print(f"TCP link.send: {tcp_us:.2f} us/packet ({sent}/{PACKETS} sent, {link.dropped_out} dropped by the bound); "
          f"UDP sendto: {udp_us:.2f} us/packet")
    writer.close()
    draining.cancel()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
