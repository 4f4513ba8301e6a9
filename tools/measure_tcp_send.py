#!/usr/bin/env python3
"""Per-packet cost of sending one 1200-byte SRTP packet to an ICE-TCP player (TcpLink.send: frame + asyncio write)
against a UDP sendto, on loopback, with a reader draining the other end (in this process: its cost is included).
Not part of the suite:  PYTHONPATH=. .venv/bin/python tools/measure_tcp_send.py
"""
import asyncio, os, socket, time
from webcall.media import tcp

class Sink:
    def link_opened(self, link): return True
    def frame_received(self, data, link): pass
    def link_closed(self, link): pass

async def main():
    loop = asyncio.get_running_loop()
    server, port = await tcp.listen(Sink(), "127.0.0.1", 0)
    links = []
    orig = tcp.TcpLink.connection_made
    def made(self, t):
        orig(self, t); links.append(self)
    tcp.TcpLink.connection_made = made
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async def drain():
        while await reader.read(1 << 16):
            pass
    task = asyncio.create_task(drain())
    await asyncio.sleep(0.1)
    link = links[0]
    data = os.urandom(1200)
    n = 20000
    sent = 0
    t0 = time.perf_counter()
    for i in range(n):
        sent += link.send(data)
        if i % 50 == 0:
            await asyncio.sleep(0)  # let the reader and the transport run, as the event loop would between packets
    tcp_us = (time.perf_counter() - t0) / n * 1e6
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0)); udp.setblocking(False)
    addr = sink.getsockname()
    t0 = time.perf_counter()
    for i in range(n):
        try:
            udp.sendto(data, addr)
        except BlockingIOError:
            pass
        if i % 50 == 0:
            await asyncio.sleep(0)
    udp_us = (time.perf_counter() - t0) / n * 1e6
    print(f"TCP link.send: {tcp_us:.2f} us/packet ({sent}/{n} sent, {link.dropped_out} dropped by the bound); "
          f"UDP sendto: {udp_us:.2f} us/packet")
    writer.close(); task.cancel(); server.close()

asyncio.run(main())
