"""The media relay between workers: decrypted RTP from the publisher's worker to each worker that has players.

A stream is relayed once per receiving worker, not once per player: the sending worker sends each RTP
packet one time to every worker that asked for the stream, and that worker fans it out to its own players.
The other direction carries feedback the receiving worker cannot answer itself: keyframe requests, and NACKs
for sequence numbers missing from its own retransmission ring.

Transport: UDP on 127.0.0.1, one socket per worker (`RelayEndpoint`), sending and receiving. Not Unix
datagram sockets, although those skip the IP stack and have filesystem permissions: an unconnected Unix
datagram receiver accepts only `net.unix.max_dgram_qlen` queued datagrams from all its senders together
(10 on this Debian host), so a keyframe burst arriving while the receiving loop is busy for a millisecond gets
EAGAIN, whereas a UDP socket queues up to SO_RCVBUF (we ask for 4 MiB: ~1500 full-size packets). A UDP
relay port is ephemeral (bound to port 0 and reported to the control process), so it never collides with the
media ports. Security on a shared host: loopback only; media is accepted only for stream ids this endpoint
subscribed to (a relay it asked for) and only from the address the control process said would send it;
feedback only for a stream this endpoint sends to that address. Everything else is counted and dropped.

Wire format: an 8-byte header, network order — magic 0x57, kind (1 media, 2 keyframe request, 3 NACK),
track index, 0, stream id (u32, allocated by the control process per stream) — then for media the RTP packet,
for a NACK a u16 count and that many u16 sequence numbers. One datagram per RTP packet. Bad or truncated
datagrams are counted and dropped, never raised. The codec (`encode_*`, `decode`) is sans-I/O.

Test-only: `RelayEndpoint.test_loss` (a fraction, 0 by default) drops that share of the media datagrams it
receives for subscribed streams, as a lossy network between workers would (counted in `test_dropped`). The
media worker sets it from the environment variable WEBCALL_RELAY_TEST_LOSS; never set it in production.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("webcall.workers.relay")

Address = tuple[str, int]

MAGIC = 0x57
MEDIA, KEYFRAME, NACK = 1, 2, 3
HEADER = struct.Struct("!BBBBI")
_COUNT = struct.Struct("!H")
MAX_NACK = 256  # sequence numbers per NACK datagram; longer lists go in several
MIN_RTP = 12
RCVBUF = 4 * 1024 * 1024
SNDBUF = 1024 * 1024

PacketCallback = Callable[[int, int, bytes], Any]
KeyframeCallback = Callable[[int, int], Any]
NackCallback = Callable[[int, int, list[int]], Any]


class RelayFormatError(ValueError):
    """A datagram that is not a valid relay message."""


@dataclass(frozen=True, slots=True)
class RelayMessage:
    kind: int
    stream_id: int
    track: int
    packet: bytes = b""  # MEDIA: the RTP packet
    seqs: tuple[int, ...] = ()  # NACK


# -- sans-I/O codec --------------------------------------------------------------------------------------------


def _check_ids(stream_id: int, track: int) -> None:
    if not 0 <= stream_id <= 0xFFFFFFFF:
        raise ValueError(f"stream id {stream_id} is not a u32")
    if not 0 <= track <= 0xFF:
        raise ValueError(f"track {track} is not a u8")


def encode_media(stream_id: int, track: int, packet: bytes) -> bytes:
    _check_ids(stream_id, track)
    return HEADER.pack(MAGIC, MEDIA, track, 0, stream_id) + packet


def encode_keyframe_request(stream_id: int, track: int) -> bytes:
    _check_ids(stream_id, track)
    return HEADER.pack(MAGIC, KEYFRAME, track, 0, stream_id)


def encode_nack(stream_id: int, track: int, seqs: Iterable[int]) -> list[bytes]:
    """NACK datagrams for `seqs` (deduplicated, order kept), at most MAX_NACK numbers each."""
    _check_ids(stream_id, track)
    unique = list(dict.fromkeys(s & 0xFFFF for s in seqs))
    out = []
    for i in range(0, len(unique), MAX_NACK):
        chunk = unique[i:i + MAX_NACK]
        out.append(HEADER.pack(MAGIC, NACK, track, 0, stream_id) + _COUNT.pack(len(chunk))
                   + struct.pack(f"!{len(chunk)}H", *chunk))
    return out


def decode(data: bytes) -> RelayMessage:
    if len(data) < HEADER.size:
        raise RelayFormatError(f"truncated: {len(data)} bytes")
    magic, kind, track, reserved, stream_id = HEADER.unpack_from(data)
    if magic != MAGIC or reserved != 0:
        raise RelayFormatError("bad magic")
    if kind == MEDIA:
        packet = data[HEADER.size:]
        if len(packet) < MIN_RTP or packet[0] >> 6 != 2:
            raise RelayFormatError("not an RTP packet")
        return RelayMessage(MEDIA, stream_id, track, packet=packet)
    if kind == KEYFRAME:
        if len(data) != HEADER.size:
            raise RelayFormatError("keyframe request with a body")
        return RelayMessage(KEYFRAME, stream_id, track)
    if kind == NACK:
        if len(data) < HEADER.size + _COUNT.size:
            raise RelayFormatError("truncated NACK")
        (count,) = _COUNT.unpack_from(data, HEADER.size)
        body = HEADER.size + _COUNT.size
        if count == 0 or count > MAX_NACK or len(data) != body + 2 * count:
            raise RelayFormatError("NACK length mismatch")
        return RelayMessage(NACK, stream_id, track, seqs=struct.unpack_from(f"!{count}H", data, body))
    raise RelayFormatError(f"unknown kind {kind}")


# -- asyncio shell ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RelayStats:
    received: int = 0  # media packets delivered to on_packet
    sent: int = 0  # media packets sent
    send_dropped: int = 0  # media packets the kernel refused (socket buffer full) or could not route
    feedback_sent: int = 0
    feedback_received: int = 0
    nacks_sent: int = 0  # NACK datagrams sent (a part of feedback_sent)
    nacks_received: int = 0  # NACK datagrams accepted (a part of feedback_received)
    malformed: int = 0  # bad or truncated datagrams
    unknown_stream: int = 0  # media for a stream we did not subscribe to, feedback for one we do not send
    wrong_source: int = 0  # a subscribed stream id from an address that is not its sender
    callback_errors: int = 0
    test_dropped: int = 0  # media dropped on purpose by `test_loss` (tests only)


class RelayEndpoint(asyncio.DatagramProtocol):
    """A worker's relay socket: sends the streams it publishes, receives the ones it subscribed to, and carries
    feedback both ways. Callbacks: `on_packet(stream_id, track, packet)`, `on_keyframe_request(stream_id,
    track)` and `on_nack(stream_id, track, seqs)` (the last two arrive at the sending side)."""

    def __init__(self, *, on_packet: PacketCallback | None = None, on_keyframe_request: KeyframeCallback | None = None,
                 on_nack: NackCallback | None = None) -> None:
        self.on_packet = on_packet
        self.on_keyframe_request = on_keyframe_request
        self.on_nack = on_nack
        self.stats = RelayStats()
        self.sock: socket.socket | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._subscriptions: dict[int, Address] = {}  # stream id -> the sending worker's relay address
        self._senders: dict[tuple[int, Address], RelaySender] = {}
        self.test_loss = 0.0  # test-only: the share of received media to drop (see the module docstring)
        self._test_rng = random.Random(11)

    @classmethod
    async def bind(cls, host: str = "127.0.0.1", port: int = 0, **callbacks: Any) -> RelayEndpoint:
        """Bind a relay socket (port 0: an ephemeral one; read it from `.address`)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for opt, size in ((socket.SO_RCVBUF, RCVBUF), (socket.SO_SNDBUF, SNDBUF)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:
                    pass  # capped by net.core.[rw]mem_max; the default still works
            sock.bind((host, port))
            sock.setblocking(False)
            self = cls(**callbacks)
            self.sock = sock
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        return self

    @property
    def address(self) -> Address:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._subscriptions.clear()
        self._senders.clear()

    # -- receiving side ---------------------------------------------------------------------------------------

    def subscribe(self, stream_id: int, source: Address) -> None:
        """Accept stream `stream_id` from the relay endpoint at `source` (the publisher's worker)."""
        _check_ids(stream_id, 0)
        self._subscriptions[stream_id] = (source[0], int(source[1]))

    def unsubscribe(self, stream_id: int) -> None:
        self._subscriptions.pop(stream_id, None)

    def request_keyframe(self, stream_id: int, track: int) -> bool:
        source = self._subscriptions.get(stream_id)
        return source is not None and self._send_feedback(encode_keyframe_request(stream_id, track), source)

    def nack(self, stream_id: int, track: int, seqs: Iterable[int]) -> bool:
        """Ask the sending worker to resend `seqs` of a stream we subscribed to. False if not subscribed."""
        source = self._subscriptions.get(stream_id)
        if source is None:
            return False
        ok = True
        for datagram in encode_nack(stream_id, track, seqs):
            sent = self._send_feedback(datagram, source)
            self.stats.nacks_sent += sent
            ok = sent and ok
        return ok

    # -- sending side -----------------------------------------------------------------------------------------

    def sender(self, dest: Address, stream_id: int) -> RelaySender:
        """A sender of stream `stream_id` to the worker whose relay endpoint is `dest`. Feedback about it from
        `dest` is accepted from now on, until the sender is closed."""
        _check_ids(stream_id, 0)
        key = (stream_id, (dest[0], int(dest[1])))
        existing = self._senders.get(key)
        if existing is not None:
            return existing
        sender = RelaySender(self, key[1], stream_id)
        self._senders[key] = sender
        return sender

    def _forget(self, sender: RelaySender) -> None:
        if self._senders.get((sender.stream_id, sender.dest)) is sender:
            del self._senders[(sender.stream_id, sender.dest)]

    def _send_feedback(self, datagram: bytes, dest: Address) -> bool:
        try:
            self.sock.sendto(datagram, dest)  # type: ignore[union-attr]
        except OSError:
            return False
        self.stats.feedback_sent += 1
        return True

    # -- DatagramProtocol ----------------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        stats = self.stats
        # the media fast path first: no RelayMessage object per packet
        if len(data) >= HEADER.size + MIN_RTP and data[0] == MAGIC and data[1] == MEDIA:
            _, _, track, reserved, stream_id = HEADER.unpack_from(data)
            if reserved != 0 or data[HEADER.size] >> 6 != 2:
                stats.malformed += 1
                return
            source = self._subscriptions.get(stream_id)
            if source is None:
                stats.unknown_stream += 1
                return
            if source != addr:
                stats.wrong_source += 1
                return
            if self.test_loss and self._test_rng.random() < self.test_loss:
                stats.test_dropped += 1
                return
            stats.received += 1
            if self.on_packet is not None:
                try:
                    self.on_packet(stream_id, track, data[HEADER.size:])
                except Exception:
                    stats.callback_errors += 1
                    log.exception("relay on_packet failed")
            return
        try:
            msg = decode(data)
        except RelayFormatError:
            stats.malformed += 1
            return
        if msg.kind == MEDIA:  # short enough to miss the fast path but valid: cannot happen, kept for safety
            stats.malformed += 1
            return
        if (msg.stream_id, addr) not in self._senders:
            stats.unknown_stream += 1
            return
        stats.feedback_received += 1
        try:
            if msg.kind == KEYFRAME:
                if self.on_keyframe_request is not None:
                    self.on_keyframe_request(msg.stream_id, msg.track)
            else:
                stats.nacks_received += 1
                if self.on_nack is not None:
                    self.on_nack(msg.stream_id, msg.track, list(msg.seqs))
        except Exception:
            stats.callback_errors += 1
            log.exception("relay feedback callback failed")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a receiver that went away: counted, the control process will notice
        self.stats.send_dropped += 1


class RelaySender:
    """Stream `stream_id` to one receiving worker. Made by `RelayEndpoint.sender`, sends from that endpoint's
    socket so the receiver can check the source and send feedback back to it."""

    __slots__ = ("endpoint", "dest", "stream_id", "_headers", "_sock", "_stats")

    def __init__(self, endpoint: RelayEndpoint, dest: Address, stream_id: int) -> None:
        self.endpoint = endpoint
        self.dest = dest
        self.stream_id = stream_id
        self._headers: dict[int, bytes] = {}
        self._sock = endpoint.sock
        self._stats = endpoint.stats

    def send(self, track: int, packet: bytes) -> bool:
        """Send one RTP packet. False (and counted) if the kernel would not take it now: real-time media is not
        queued in user space — a late packet is worth less than the NACK that will recover it."""
        header = self._headers.get(track)
        if header is None:
            _check_ids(self.stream_id, track)
            header = self._headers[track] = HEADER.pack(MAGIC, MEDIA, track, 0, self.stream_id)
        try:
            self._sock.sendto(header + packet, self.dest)  # type: ignore[union-attr]
        except OSError:  # BlockingIOError (buffer full), ECONNREFUSED from an earlier ICMP, closed socket
            self._stats.send_dropped += 1
            return False
        self._stats.sent += 1
        return True

    def close(self) -> None:
        self.endpoint._forget(self)
