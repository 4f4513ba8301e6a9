"""A lossy UDP relay on 127.0.0.1 between WebRTC clients and the server's media port.

Each client address gets its own upstream socket, so the server sees one 5-tuple per client, as it would
through a NAT. Only RTP/RTCP datagrams (first byte 128–191) are dropped: connection setup stays reliable,
so what a test measures is media recovery (NACK, RTX, PLI), not ICE retries.
"""

from __future__ import annotations

import asyncio
import random

Address = tuple[str, int]


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay, client: Address) -> None:
        self.relay, self.client = relay, client
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.relay.to_client(data, self.client)


class LossyRelay(asyncio.DatagramProtocol):
    def __init__(self, target: Address, loss: float, seed: int = 7) -> None:
        self.target = target
        self.loss = loss
        # One generator per direction: which packets of a direction are lost then depends on that direction's
        # packets alone, not on how the two interleave (with one shared generator, the ~50 RTCP packets two
        # players send up in a test lost none in about one run of ten).
        self.rng = {"up": random.Random(seed), "down": random.Random(seed + 1)}
        self.front: asyncio.DatagramTransport | None = None
        self.upstreams: dict[Address, _Upstream] = {}
        self.pending: dict[Address, list[bytes]] = {}
        self.blackhole = False  # drop everything, STUN included: the client "vanishes"
        self.dropped = {"up": 0, "down": 0}
        self.passed = {"up": 0, "down": 0}

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self.front.get_extra_info("sockname")[1]

    def _drop(self, data: bytes, direction: str) -> bool:
        if self.blackhole or (127 < data[0] < 192 and self.rng[direction].random() < self.loss):
            self.dropped[direction] += 1
            return True
        self.passed[direction] += 1
        return False

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if not data or self._drop(data, "up"):
            return
        upstream = self.upstreams.get(addr)
        if upstream is None:
            self.pending.setdefault(addr, []).append(data)
            if len(self.pending[addr]) == 1:
                asyncio.get_running_loop().create_task(self._open(addr))
        elif upstream.transport is not None:
            upstream.transport.sendto(data)

    async def _open(self, client: Address) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Upstream(self, client)
        await loop.create_datagram_endpoint(lambda: upstream, remote_addr=self.target)
        self.upstreams[client] = upstream
        for data in self.pending.pop(client, []):
            upstream.transport.sendto(data)  # type: ignore[union-attr]

    def to_client(self, data: bytes, client: Address) -> None:
        if self.front is not None and data and not self._drop(data, "down"):
            self.front.sendto(data, client)

    def close(self) -> None:
        for upstream in self.upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()
        if self.front is not None:
            self.front.close()
