"""The relay between workers, sealed for the network between nodes: AES-128-GCM per datagram, keys per relay.

Between workers the relay (workers/relay.py) carries plain RTP over loopback. Between nodes the same endpoint
and the same messages cross a real network, so each datagram is sealed: the 8-byte relay header stays in clear
(as the AEAD's associated data, so it cannot be altered) with magic 0x5A and a direction byte, followed by an
8-byte packet counter and the AES-128-GCM ciphertext and tag of the body (the RTP packet, the NACK list, ...).
Two keys per relay, one per direction (so a counter never repeats under a key), both chosen by the node that
pulls the stream and sent in its pull request (cluster/node.py). A replay window of 1024 counters drops copies.

Only what this node asked for is accepted: media for a stream id it pulled (from the address it pulled it from,
opened with that pull's key), feedback for a relay it sends (to that address, with that relay's key). A plain
(unsealed) datagram, a wrong key, a replay or an unknown id is counted and dropped.

Two messages exist only here: KEEPALIVE (both ways, every half second: how each side learns the other is gone
when no media flows; the receiving side's first one also tells the origin it may start sending, its GOP first)
and END (the body is a reason: the origin's stream ended, or the edge needs it no more).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..workers.relay import HEADER, MAGIC, MIN_RTP, Address, RelayEndpoint, RelaySender, _check_ids

log = logging.getLogger("webcall.cluster")

SEALED = 0x5A
DOWN, UP = 1, 2  # origin -> edge (media, keepalive, end); edge -> origin (keyframe, NACK, keepalive, end)
KEEPALIVE, END, SENDER_REPORT = 4, 5, 6
_SR = struct.Struct("!QI")  # the publisher's NTP time and RTP timestamp of its latest sender report
KEY_SIZE = 16
_COUNTER = struct.Struct("!Q")
_SEALED_MIN = HEADER.size + _COUNTER.size + 16
WINDOW = 1024
_MASK = (1 << WINDOW) - 1


def new_key() -> bytes:
    return os.urandom(KEY_SIZE)


class _Box:
    """One direction of one relay: seals with a counter, opens with a replay window."""

    __slots__ = ("aead", "counter", "top", "window")

    def __init__(self, key: bytes) -> None:
        self.aead = AESGCM(key)
        self.counter = 0
        self.top = -1
        self.window = 0

    def seal(self, header: bytes, body: bytes) -> bytes:
        self.counter += 1
        nonce_tail = _COUNTER.pack(self.counter)
        return header + nonce_tail + self.aead.encrypt(b"\0\0\0\0" + nonce_tail, body, header)

    def open(self, data: bytes) -> bytes | None:
        header = data[:HEADER.size]
        nonce_tail = data[HEADER.size:HEADER.size + _COUNTER.size]
        (n,) = _COUNTER.unpack(nonce_tail)
        if n <= self.top - WINDOW or (n <= self.top and self.window >> (self.top - n) & 1):
            return None  # too old, or seen
        try:
            body = self.aead.decrypt(b"\0\0\0\0" + nonce_tail, data[HEADER.size + _COUNTER.size:], header)
        except InvalidTag:
            return None
        if n > self.top:
            shift = n - self.top
            self.window = ((self.window << shift) | 1) & _MASK if shift < WINDOW else 1
            self.top = n
        else:
            self.window |= 1 << (self.top - n)
        return body


class Link:
    """One relay as one side sees it: its keys, its peer, when it last heard from the peer."""

    __slots__ = ("stream_id", "peer", "seal_box", "open_box", "heard", "ended")

    def __init__(self, stream_id: int, peer: Address, seal_key: bytes, open_key: bytes) -> None:
        self.stream_id, self.peer = stream_id, peer
        self.seal_box, self.open_box = _Box(seal_key), _Box(open_key)
        self.heard = 0.0  # time.monotonic() of the last authentic datagram from the peer; 0 = never
        self.ended: str | None = None  # the peer's END reason


class SealedSender(RelaySender):
    """RelaySender that seals each media datagram with its relay's DOWN key."""

    __slots__ = ("link",)

    def __init__(self, endpoint: SealedRelay, dest: Address, stream_id: int, link: Link) -> None:
        super().__init__(endpoint, dest, stream_id)
        self.link = link

    def send(self, track: int, packet: bytes) -> bool:
        header = HEADER.pack(SEALED, 1, track, DOWN, self.stream_id)
        try:
            self._sock.sendto(self.link.seal_box.seal(header, packet), self.dest)  # type: ignore[union-attr]
        except OSError:
            self._stats.send_dropped += 1
            return False
        self._stats.sent += 1
        return True


class SealedRelay(RelayEndpoint):
    """A node's relay socket: relay.py's endpoint with every datagram sealed, and KEEPALIVE/END.

    `on_end(link, reason)` for END, `on_ready(link)` for a sending relay's first datagram from its receiver,
    `on_sender_report(stream_id, track, ntp, rtp)` for the publisher's SRs passed on (a player's SRs keep audio
    and video in sync from them). Every authentic datagram sets its link's `heard` (liveness)."""

    def __init__(self, **callbacks: Any) -> None:
        self.on_end: Callable[[Link, str], Any] | None = callbacks.pop("on_end", None)
        self.on_sender_report: Callable[[int, int, int, int], Any] | None = callbacks.pop("on_sender_report", None)
        self.on_ready: Callable[[Link], Any] | None = callbacks.pop("on_ready", None)
        super().__init__(**callbacks)
        self.in_links: dict[int, Link] = {}  # stream id -> the relay we pull
        self.out_links: dict[tuple[int, Address], Link] = {}  # (stream id, edge) -> the relay we send
        self.unsealed = 0  # plain or undecryptable datagrams (also counted in stats.malformed)
        self.auth_failed = 0  # sealed, for a known relay, but the key or counter is wrong

    # --- the edge (pulling) side -------------------------------------------------------------------

    def pull(self, stream_id: int, origin: Address, down_key: bytes, up_key: bytes) -> Link:
        _check_ids(stream_id, 0)
        link = Link(stream_id, (origin[0], int(origin[1])), up_key, down_key)
        self.in_links[stream_id] = link
        self.subscribe(stream_id, link.peer)
        return link

    def unpull(self, stream_id: int, reason: str = "") -> None:
        link = self.in_links.pop(stream_id, None)
        if link is not None and reason:
            for _ in range(2):
                self._send_sealed(link, END, 0, UP, reason.encode()[:200])
        self.unsubscribe(stream_id)

    # --- the origin (sending) side -----------------------------------------------------------------

    def offer(self, dest: Address, stream_id: int, down_key: bytes, up_key: bytes) -> Link:
        """Accept feedback (and the first keepalive: ready) from `dest` for `stream_id` from now on."""
        _check_ids(stream_id, 0)
        dest = (dest[0], int(dest[1]))
        link = Link(stream_id, dest, down_key, up_key)
        self.out_links[(stream_id, dest)] = link
        return link

    def sealed_sender(self, link: Link) -> SealedSender:
        sender = SealedSender(self, link.peer, link.stream_id, link)
        self._senders[(link.stream_id, link.peer)] = sender
        return sender

    def withdraw(self, link: Link, reason: str = "") -> None:
        if self.out_links.get((link.stream_id, link.peer)) is link:
            del self.out_links[(link.stream_id, link.peer)]
            if reason:
                for _ in range(3):  # UDP: the edge also notices silence, this is only the quick way
                    self._send_sealed(link, END, 0, DOWN, reason.encode()[:200])
        self._senders.pop((link.stream_id, link.peer), None)

    # --- both --------------------------------------------------------------------------------------

    def keepalive(self, link: Link, direction: int) -> None:
        self._send_sealed(link, KEEPALIVE, 0, direction, b"")

    def sender_report(self, link: Link, track: int, ntp: int, rtp: int) -> None:
        self._send_sealed(link, SENDER_REPORT, track, DOWN, _SR.pack(ntp & 0xFFFFFFFFFFFFFFFF, rtp & 0xFFFFFFFF))

    def _send_sealed(self, link: Link, kind: int, track: int, direction: int, body: bytes) -> bool:
        header = HEADER.pack(SEALED, kind, track, direction, link.stream_id)
        try:
            self.sock.sendto(link.seal_box.seal(header, body), link.peer)  # type: ignore[union-attr]
        except OSError:
            return False
        self.stats.feedback_sent += kind in (2, 3)
        return True

    def _send_feedback(self, datagram: bytes, dest: Address) -> bool:
        """relay.py's keyframe requests and NACKs (plain, from request_keyframe/nack), sealed UP."""
        _, kind, track, _, stream_id = HEADER.unpack_from(datagram)
        link = self.in_links.get(stream_id)
        if link is None:
            return False
        return self._send_sealed(link, kind, track, UP, datagram[HEADER.size:])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < _SEALED_MIN or data[0] != SEALED:
            self.unsealed += 1
            self.stats.malformed += 1
            return
        _, kind, track, direction, stream_id = HEADER.unpack_from(data)
        if direction == DOWN:
            link = self.in_links.get(stream_id)
            if link is not None and link.peer != addr:
                self.stats.wrong_source += 1
                return
        elif direction == UP:
            link = self.out_links.get((stream_id, addr))
        else:
            link = None
        if link is None:
            self.stats.unknown_stream += 1
            return
        body = link.open_box.open(data)
        if body is None:
            self.auth_failed += 1
            return
        first = link.heard == 0.0
        link.heard = time.monotonic()
        if kind == KEEPALIVE:
            if first and direction == UP and self.on_ready is not None:
                self.on_ready(link)
            return
        if kind == SENDER_REPORT:
            if direction == DOWN and len(body) == _SR.size and self.on_sender_report is not None:
                self.on_sender_report(stream_id, track, *_SR.unpack(body))
            return
        if kind == END:
            link.ended = body.decode(errors="replace")
            if self.on_end is not None:
                self.on_end(link, link.ended)
            return
        if first and direction == UP and self.on_ready is not None:
            self.on_ready(link)
        if kind == 1 and direction == DOWN:  # media: relay.py's fast path, without building a plain datagram
            if len(body) < MIN_RTP or body[0] >> 6 != 2:
                self.stats.malformed += 1
                return
            if self.test_loss and self._test_rng.random() < self.test_loss:  # tests only (relay.py)
                self.stats.test_dropped += 1
                return
            self.stats.received += 1
            if self.on_packet is not None:
                try:
                    self.on_packet(stream_id, track, body)
                except Exception:
                    self.stats.callback_errors += 1
                    log.exception("relay on_packet failed")
            return
        # feedback: relay.py's own checks and callbacks, on the opened datagram
        super().datagram_received(HEADER.pack(MAGIC, kind, track, 0, stream_id) + body, addr)
