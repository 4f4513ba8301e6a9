"""One WebRTC connection on the shared media port: ICE-lite state, DTLS, SRTP, deadlines.

The transport knows datagrams and keys, not tracks: decrypted RTP and RTCP go to its listener (a
publisher or player endpoint), which owns the producers or consumers.

A path is a UDP address or an ICE-TCP connection (tcp.py's `TcpLink`, framed, no sendmmsg and no compiled
fan-out core: `sockaddr` stays None, so its players are served on the Python send path). Once connected, a
transport on UDP stays on UDP: its players may already be targets of the compiled core, which keep the address.
One on TCP moves to UDP when the client nominates a UDP pair (browsers may finish ICE and DTLS on the TCP pair
that answered first, then move to the better one): its players are served in Python, which reads the path per
packet, and consent is only counted on the path we send on.

A publisher's transport may hand its reading to an ingest thread (ingest.py) once connected on UDP: its
datagrams then arrive unprotected, through `on_plain_rtp` / `on_plain_rtcp`, and the thread stops when the
publisher's path changes (its socket is connected to the old one) or the transport closes.
"""

from __future__ import annotations

import logging
import secrets
import string
import socket
from typing import Protocol

from .failures import Failure
from .dtls import DtlsError, DtlsIdentity, DtlsServer
from .ingest import MEDIA_LOCK, Ingest
from .srtp import SrtpError, SrtpSession, abi_ffi, pack_sockaddr
from .tcp import TcpLink

log = logging.getLogger("webcall.media")

Address = tuple[str, int]
_ICE_CHARS = string.ascii_letters + string.digits


class TransportListener(Protocol):
    def on_transport_connected(self, now: float) -> None: ...
    def on_transport_failed(self, reason: Failure) -> None: ...
    def on_rtp(self, packet: bytes, now: float) -> None: ...
    def on_rtcp(self, packet: bytes, now: float) -> None: ...
    def on_tick(self, now: float) -> float | None:
        """Periodic work of a connected transport; returns when it is next due (None: at the port's next tick)."""


def new_ice_credentials() -> tuple[str, str]:
    """A random ICE ufrag (8 characters) and password (24; RFC 8839 asks for at least 22)."""
    return ("".join(secrets.choice(_ICE_CHARS) for _ in range(8)),
            "".join(secrets.choice(_ICE_CHARS) for _ in range(24)))


class PortRegistry(Protocol):
    """What a transport needs of the UDP port it lives on (media/port.py): a socket and the demux tables."""

    sock: socket.socket | None
    ingest_enabled: bool  # publishers on UDP get an ingest thread (ingest.py)

    def register(self, transport: WebRtcTransport) -> None: ...
    def handshake_started(self, transport: WebRtcTransport) -> bool: ...
    def handshake_done(self, transport: WebRtcTransport) -> None: ...
    def bind_address(self, transport: WebRtcTransport, addr: Address | TcpLink) -> None: ...
    def unregister(self, transport: WebRtcTransport) -> None: ...


class TransportState:
    NEW = "new"  # answer sent, waiting for the first valid STUN check
    ICE_CONNECTED = "ice-connected"  # peer address known, DTLS in progress
    CONNECTED = "connected"  # SRTP keys ready
    CLOSED = "closed"


class WebRtcTransport:
    def __init__(
        self,
        port: PortRegistry,
        identity: DtlsIdentity,
        *,
        remote_ufrag: str,
        remote_fingerprints: list[tuple[str, str]],
        listener: TransportListener,
        connect_timeout: float,
        consent_timeout: float,
        now: float,
        label: str = "",
        ice: tuple[str, str] | None = None,
    ) -> None:
        self.id = secrets.token_hex(4)
        self.label = label
        self.port = port
        self.listener = listener
        # Our ICE credentials: chosen here, or by whoever wrote the answer already (a control process).
        self.local_ufrag, self.local_pwd = ice or new_ice_credentials()
        self.ice_key = self.local_pwd.encode()  # what signs the checks and our answers (MESSAGE-INTEGRITY)
        self.remote_ufrag = remote_ufrag
        self.state = TransportState.NEW
        self.addr: Address | TcpLink | None = None  # where we send
        self.link: TcpLink | None = None  # `addr` when it is an ICE-TCP connection
        self.addresses: set[Address | TcpLink] = set()  # every path that passed a connectivity check
        # `addr` as a struct sockaddr_in for sendmmsg, rewritten in place when the peer moves: the players'
        # fan-out targets point at it. None until an address is known, or when it is not IPv4.
        self.sockaddr = None
        self._dtls = DtlsServer(identity, remote_fingerprints)
        self.srtp_profile: str | None = None
        self._rx: SrtpSession | None = None
        self.tx: SrtpSession | None = None
        self._connect_deadline = now + connect_timeout
        self._consent_timeout = consent_timeout
        self.last_stun = 0.0
        self._refused_tcp = False  # the client nominated a TCP path after we connected on UDP (logged once)
        self.ingest: Ingest | None = None  # the thread reading this publisher's datagrams (ingest.py)
        self._handshaking = False  # admitted by the port's cap on DTLS handshakes in progress
        self._closing = False  # close() began (the state is CLOSED once it ends)
        # Counters (plain ints: they are bumped per packet).
        self.rx_packets = self.rx_bytes = 0
        self.srtp_errors = self.send_errors = 0
        port.register(self)

    # --- ICE ------------------------------------------------------------------------------------

    def on_binding_request(self, addr: Address | TcpLink, use_candidate: bool, now: float) -> None:
        """A valid check arrived (the port verified its integrity): that address may now carry our traffic.

        Every validated address is accepted for input; we send to the nominated one, or to the first one
        until the client nominates — and to wherever its DTLS comes from, since the client picks the path.
        """
        if self.state == TransportState.CLOSED:
            return
        if addr not in self.addresses:
            self.addresses.add(addr)
            self.port.bind_address(self, addr)
        if self.addr is None:
            self._send_to(addr)
            self.state = TransportState.ICE_CONNECTED
            log.debug("ice connected transport=%s %s addr=%s", self.id, self.label, addr)
        elif use_candidate and addr != self.addr:
            self._send_to(addr)
        if addr == self.addr:
            # Consent (RFC 7675) is for the path we send on: checks on another one (a TCP path we will not move
            # to once connected, say) do not keep a dead path alive.
            self.last_stun = now

    def _send_to(self, addr: Address | TcpLink) -> None:
        if addr == self.addr:
            return
        link = addr if isinstance(addr, TcpLink) else None
        if self.state == TransportState.CONNECTED and link is not None and self.link is None:
            if not self._refused_tcp:
                self._refused_tcp = True
                log.info("path switch to tcp refused transport=%s %s", self.id, self.label)
            return  # no moving from UDP to TCP once players may be on the compiled core (module docstring)
        if self.ingest is not None:
            self.ingest.stop("path changed")  # its socket is connected to the old path
            self.ingest = None
            if self._closing:
                return  # what it had queued ended this transport (the peer's DTLS close_notify)
        self.addr = addr
        self.link = link
        if link is not None:
            self.sockaddr = None
            return
        packed = pack_sockaddr(addr)
        if packed is None:
            self.sockaddr = None
        elif self.sockaddr is None:
            self.sockaddr = abi_ffi.new("char[16]", packed)
        else:
            held = MEDIA_LOCK.acquire()  # an ingest thread may be sending to the old address right now
            try:
                abi_ffi.memmove(self.sockaddr, packed, 16)
            finally:
                MEDIA_LOCK.release(held)

    # --- DTLS -----------------------------------------------------------------------------------

    def path_lost(self, addr: Address | TcpLink) -> None:
        """An ICE-TCP connection of this transport closed: if we were sending on it, the client is gone."""
        self.addresses.discard(addr)
        if addr is self.addr and self.state != TransportState.CLOSED:
            log.info("ice-tcp connection lost transport=%s %s", self.id, self.label)
            self.fail(Failure.PEER_CLOSED)

    def on_dtls(self, data: bytes, addr: Address | TcpLink, now: float) -> None:
        if not self._handshaking and self.state == TransportState.ICE_CONNECTED:
            if not self.port.handshake_started(self):
                return  # over the cap: dropped; the client retransmits its ClientHello
            self._handshaking = True
        self._send_to(addr)
        try:
            out, keys = self._dtls.feed(data)
        except DtlsError as exc:
            log.info("dtls failed transport=%s %s reason=%s", self.id, self.label, exc)
            self.fail(Failure.DTLS_FINGERPRINT if exc.fingerprint else Failure.DTLS_ERROR)
            return
        for datagram in out:
            self.send_raw(datagram)
        if keys is not None:
            self._rx, self.tx, self.srtp_profile = keys.rx, keys.tx, keys.profile
            self.state = TransportState.CONNECTED
            self.port.handshake_done(self)
            log.info("connected transport=%s %s srtp=%s", self.id, self.label, keys.profile)
            self.listener.on_transport_connected(now)
        elif self._dtls.closed:
            log.info("dtls closed by peer transport=%s %s", self.id, self.label)
            self.fail(Failure.PEER_CLOSED)

    # --- SRTP (the hot path) ----------------------------------------------------------------------

    @property
    def rx(self) -> SrtpSession | None:
        """The inbound SRTP session (None before the keys, and after close)."""
        return self._rx

    def start_ingest(self) -> Ingest | None:
        """Let an ingest thread read this (connected, UDP, IPv4) transport's datagrams, if the port has them
        on; None if not."""
        if self.ingest is None and self.state == TransportState.CONNECTED and self.sockaddr is not None:
            self.ingest = Ingest.start(self.port, self)
        return self.ingest

    def on_srtp(self, data: bytes, now: float) -> None:
        rx = self._rx
        if rx is None:
            return
        held = MEDIA_LOCK.acquire() if self.ingest is not None else False  # the thread uses `rx` too
        try:
            if 192 <= data[1] <= 223:
                packet = rx.unprotect_rtcp(data)
                rtcp = True
            else:
                packet = rx.unprotect(data)
                rtcp = False
        except SrtpError:
            self.srtp_errors += 1
            return
        finally:
            MEDIA_LOCK.release(held)
        if rtcp:
            self.listener.on_rtcp(packet, now)
        else:
            self.on_plain_rtp(packet, now, len(data))

    def on_plain_rtp(self, packet: bytes, now: float, size: int = 0) -> None:
        """An unprotected RTP packet that arrived at `now` (`size`: on the wire, when known)."""
        self.rx_packets += 1
        self.rx_bytes += size or len(packet)
        self.listener.on_rtp(packet, now)

    def on_plain_rtcp(self, packet: bytes, now: float) -> None:
        self.listener.on_rtcp(packet, now)

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet (retransmissions and replays; forwarding uses Consumer.forward)."""
        self.send_protected(packet, rtcp=False)

    def send_rtcp(self, packet: bytes) -> None:
        self.send_protected(packet, rtcp=True)

    def send_protected(self, packet: bytes, rtcp: bool) -> None:
        tx = self.tx
        if tx is None:
            return
        held = MEDIA_LOCK.acquire()  # an ingest thread may be protecting with this session
        try:
            data = tx.protect_rtcp(packet) if rtcp else tx.protect(packet)
        except SrtpError:
            self.send_errors += 1
            return
        finally:
            MEDIA_LOCK.release(held)
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        if self.addr is None:
            return
        link = self.link
        if link is not None:
            if not link.send(data):
                self.send_errors += 1
            return
        try:
            self.port.sock.sendto(data, self.addr)
        except OSError:  # full socket buffer or unreachable peer: UDP drops, and so do we
            self.send_errors += 1

    # --- time -------------------------------------------------------------------------------------

    def tick(self, now: float) -> float | None:
        """Deadlines, consent, DTLS retransmission, RTCP. Returns when this transport next needs a tick (None: at
        the port's next one); the port visits it then, not every tick (a connected player: about once a second)."""
        if self.state == TransportState.CONNECTED:
            expires = self.last_stun + self._consent_timeout
            if now > expires:
                log.info("consent expired transport=%s %s", self.id, self.label)
                self.fail(Failure.CONSENT_EXPIRED)
                return None
            due = self.listener.on_tick(now)
            return None if due is None else min(due, expires)
        if now >= self._connect_deadline:
            reason = Failure.ICE_TIMEOUT if self.state == TransportState.NEW else Failure.DTLS_ERROR
            log.info("connect timeout transport=%s %s state=%s", self.id, self.label, self.state)
            self.fail(reason)
        elif self.state == TransportState.ICE_CONNECTED:
            for datagram in self._dtls.handle_timeout():
                self.send_raw(datagram)
        return None

    # --- teardown ---------------------------------------------------------------------------------

    def fail(self, reason: Failure) -> None:
        if self._closing:
            return  # closed, or closing: the owner called close() and needs no telling
        self.close()
        self.listener.on_transport_failed(reason)

    def close(self) -> None:
        """Idempotent; tells nobody (the owner called it, or fail() reports it)."""
        if self._closing:
            return
        # The ingest takes its queue in before it stops, and a packet in it may end this transport (a DTLS
        # close_notify): that must find the close under way, not start a second one.
        self._closing = True
        if self.ingest is not None:
            self.ingest.stop("closed")  # before the inbound session it uses goes
            self.ingest = None
        for datagram in self._dtls.shutdown():
            self.send_raw(datagram)
        self._dtls.release()  # a closed transport sits in reference cycles until a full collection: free this now
        self.state = TransportState.CLOSED
        self.port.unregister(self)
        self._rx = self.tx = None
