"""The single UDP media port: every WebRTC connection of the server shares it.

Demultiplexing (RFC 7983 by the first byte): STUN Binding requests are matched to a transport by the
ICE username and answered here (ICE-lite: we never send checks; the usual check is read by stun_check.py, any
other by aioice); the first valid check binds the sender's address to that transport. DTLS and SRTP are then
routed by a dict lookup on the address. Anything else — unknown addresses, garbage, bad STUN — is counted and
dropped, never raised.

ICE over TCP (tcp.py): with a TCP port (`start_tcp`), each accepted connection (`TcpLink`) is one more
"address": its frames take the same demultiplexing as datagrams, and a link that a valid check bound to a
transport is in `by_addr` like a UDP address. A link whose first frame is not a valid check is closed.

Guardrails (webcall/limits.py), per port, so per media worker with --workers 2+: an address that has not passed
a STUN check may send `max_unverified` datagrams a second (more are dropped before any parsing: a flood of
bogus checks costs no HMAC), and at most `max_handshakes` DTLS handshakes are in progress (a transport's first
DTLS datagram beyond that is dropped; the client retransmits it). Each refusal is counted in `refusals`.

Time: the port keeps one timer, on a grid of TICK_INTERVAL, and wakes only at grid points where something is due: a
transport, the ingest threads' queues and the core's sender reports (the take-in grid: every TAKE_IN_INTERVAL on
average, each gap drawn at random), an ICE-TCP link's deadline; otherwise every IDLE_INTERVAL. Each transport's tick
says when it is next due: "at the next tick" (None: a handshake's retransmissions, a publisher's NACK retries),
which is the next grid point; or a time (a player's next sender report until the core sends them, consent, a
publisher's reports and input watch), which is put on the take-in grid, so that ten players' reports, due at random
instants, share the port's wake-ups instead of each having one; but never more than MAX_LATE late (if the next
take-in is later than that, the transport gets its own grid point then). The take-in grid's gaps are random because
every RTCP report rides on it, and RFC 3550 wants their intervals so (reports.py). What must not be that late (a
NACK retry, a publisher's keyframe cadence) asks for its grid point itself (`tick_at`). Every wake-up of the process
costs about what a packet's forwarding does (docs/per-packet-cost.md, "Third pass"), so a quiet port sleeps.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from aioice import stun

from ..eventloop import TIMER_SLACK
from ..limits import DTLS_HANDSHAKES, UNVERIFIED_DATAGRAMS, Refusals
from .failures import Failure
from .fanout import FanoutCore, new_core
from .ingest import Ingest, IngestCounts
from .reports import RTCP_WINDOW, SenderReports, rtcp_interval_range
from .srtp import SendBatch
from .stats import FanoutCost
from .stun_check import binding_response, parse_check, verify
from .tcp import MAX_UNVERIFIED_LINKS, UNVERIFIED_TIMEOUT, TcpLink, listen

if TYPE_CHECKING:
    from .consumer import Consumer
    from .srtp import SrtpSession
    from .transport import Address, WebRtcTransport

log = logging.getLogger("webcall.media")

TICK_INTERVAL = 0.1  # s: the grid the port's timer wakes on; a transport due "at the next tick" waits this long
TAKE_IN_INTERVAL = 1.0  # s: how often, on average, the port takes in the ingest threads' queues.
# A wake-up costs the event loop about as much as the packets it takes in (docs/per-packet-cost.md, "Twentieth
# pass"): at 10 players a second's grid instead of 0.2 s's cuts what the event loop spends by about a third.
TAKE_IN_JITTER = 0.4  # each gap of that grid is drawn from (1 ± this) × TAKE_IN_INTERVAL, in whole ticks
MAX_TAKE_IN_GAP = (1 + TAKE_IN_JITTER) * TAKE_IN_INTERVAL  # s: the longest (ingest.py: shorter than BATCH)
# s: the most a transport's due time is put off to share a take-in: a report due at the start of RFC 3550's window
# still goes by its end (reports.py)
MAX_LATE = RTCP_WINDOW[1] - RTCP_WINDOW[0]
IDLE_INTERVAL = 1.0  # s: the longest the port sleeps with nothing due
UNVERIFIED_TABLE_SIZE = 65536  # addresses counted per second; beyond it (a spoofed flood) new ones are refused


class MediaPort(asyncio.DatagramProtocol):
    def __init__(self, fanout_core: str = "auto", fanout_threads: int = 1, max_unverified: int = 0,
                 max_handshakes: int = 0, ingest: str = "loop") -> None:
        self.fanout_mode = fanout_core  # auto, c or python (see fanout.py)
        self.fanout_threads = fanout_threads
        self.ingest_mode = ingest  # auto: UDP publishers get an ingest thread when the core is loaded (ingest.py)
        self.ingest_enabled = False  # ... and it could be had (decided in start())
        self.ingest_counts = IngestCounts()
        self.ingests: set[Ingest] = set()  # the running ingest threads' Python ends: each tick takes in their queues
        self.core: FanoutCore | None = None
        self.reports: SenderReports | None = None  # the players' sender reports, once they are on the core
        self.sock: socket.socket | None = None
        self.by_ufrag: dict[str, WebRtcTransport] = {}
        self.by_addr: dict[Address, WebRtcTransport] = {}
        self.transports: set[WebRtcTransport] = set()
        # When each transport next needs a tick: (grid slot, tie-breaker, transport), a heap. A connected player is
        # due about once a second (its sender reports), not on each of the ten ticks a second (visiting 300
        # players with nothing due was about a fifth of the tick's CPU). `_slot_of` is each transport's earliest
        # entry: the others (it was asked to tick sooner, `tick_at`) and those of unregistered transports are
        # dropped when they come up.
        self._due: list[tuple[int, int, WebRtcTransport]] = []
        self._due_order = itertools.count()
        self._slot_of: dict[WebRtcTransport, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0  # the grid slot the timer is set for
        self._ticking = False  # (what a tick schedules is armed once, when it ends)
        self._take_in_slots: list[int] = []  # the take-in grid ahead, drawn as far as it was asked for (`_coarse`)
        self.dropped = 0  # datagrams nobody could take
        self.errors = 0  # exceptions contained at this boundary
        self.batch: SendBatch | None = None
        self.fanout_cost = FanoutCost()  # sampled by every producer on this port
        self.max_unverified = max_unverified  # datagrams a second per unverified address; 0 = no limit
        self.max_handshakes = max_handshakes  # DTLS handshakes in progress; 0 = no limit
        self.refusals = Refusals()
        self._unverified: dict[Address, int] = {}  # datagrams this second, by address not yet verified
        self._unverified_reset = 0.0
        self.handshaking: set[WebRtcTransport] = set()
        self._endpoint: asyncio.DatagramTransport | None = None
        self.tcp_server: asyncio.AbstractServer | None = None
        self.links: set[TcpLink] = set()  # open ICE-TCP connections
        self.tcp_refused = 0  # ICE-TCP connections closed for bad input (framing, no valid check, too many)

    async def start(self, host: str, port: int) -> int:
        """Bind and start; returns the bound port (useful with port 0)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind((host, port))
        sock.setblocking(False)
        self.sock = sock
        # Shared by every producer: a fan-out runs to completion (flush included) before the next one starts.
        self.batch = SendBatch(sock) if SendBatch.available else None
        self.core = new_core(sock, self.fanout_mode, self.fanout_threads)
        if self.core is not None and family == socket.AF_INET:
            self.reports = SenderReports(self.core, sock, rtcp_interval_range(MAX_TAKE_IN_GAP), TIMER_SLACK)
        if self.ingest_mode == "auto" and self.core is not None:
            # Set after bind, so that a port in use is still refused; the publishers' connected sockets share
            # the port with this one (ingest.py).
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                self.ingest_enabled = True
            except (OSError, AttributeError) as exc:
                log.warning("ingest threads off: SO_REUSEPORT on the media port failed (%s)", exc)
        loop = asyncio.get_running_loop()
        self._endpoint, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._arm(_slot_now(time.monotonic()) + 1)
        return sock.getsockname()[1]

    async def start_tcp(self, host: str, port: int) -> int:
        """Listen for ICE-TCP (tcp.py) on `port` too; returns the bound port."""
        self.tcp_server, bound = await listen(self, host, port)
        return bound

    async def stop(self) -> None:
        for transport in list(self.transports):
            transport.fail(Failure.INTERNAL_ERROR)
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None
        for link in list(self.links):
            link.close("server stopped")
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None  # (nothing arms the timer from here on)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- registry ---------------------------------------------------------------------------------

    def register(self, transport: WebRtcTransport) -> None:
        if transport not in self.transports:
            self.tick_at(transport, 0.0)  # at the next tick
        self.transports.add(transport)
        self.by_ufrag[transport.local_ufrag] = transport

    def bind_address(self, transport: WebRtcTransport, addr: Address) -> None:
        previous = self.by_addr.get(addr)
        if previous is not None and previous is not transport:
            # The same client port now speaks for another connection: the old one is gone.
            previous.fail(Failure.ICE_ERROR)
        self.by_addr[addr] = transport

    def unregister(self, transport: WebRtcTransport) -> None:
        self.transports.discard(transport)
        self._slot_of.pop(transport, None)
        self.handshaking.discard(transport)
        if self.by_ufrag.get(transport.local_ufrag) is transport:
            del self.by_ufrag[transport.local_ufrag]
        for addr in transport.addresses:
            if self.by_addr.get(addr) is transport:
                del self.by_addr[addr]
                if isinstance(addr, TcpLink):
                    addr.close("transport closed")  # after what is queued (the DTLS close alert)

    def handshake_started(self, transport: WebRtcTransport) -> bool:
        """May this transport begin its DTLS handshake now? (False: over --max-dtls-handshakes, counted.)"""
        if self.max_handshakes and len(self.handshaking) >= self.max_handshakes:
            self.refusals[DTLS_HANDSHAKES] += 1
            return False
        self.handshaking.add(transport)
        return True

    def handshake_done(self, transport: WebRtcTransport) -> None:
        self.handshaking.discard(transport)

    def _admit_unverified(self, addr: Address) -> bool:
        """Count a datagram from an address no transport has verified; False once it is over its budget."""
        now = time.monotonic()
        if now - self._unverified_reset >= 1.0:  # the budgets are per second
            self._unverified.clear()
            self._unverified_reset = now
        count = self._unverified.get(addr, 0) + 1
        if count == 1 and len(self._unverified) >= UNVERIFIED_TABLE_SIZE:
            self.refusals[UNVERIFIED_DATAGRAMS] += 1
            return False
        self._unverified[addr] = count
        if self.max_unverified and count > self.max_unverified:
            self.refusals[UNVERIFIED_DATAGRAMS] += 1
            return False
        return True

    # --- datagrams ----------------------------------------------------------------------------------

    def receive_from(self, data: bytes, addr: Address) -> None:
        """A datagram from `addr` that an ingest thread read (STUN, DTLS): handled as if it came here."""
        self._receive(data, addr)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(addr) > 2:  # IPv6 tuples carry flow info and scope id
            addr = addr[:2]
        self._receive(data, addr)

    def _receive(self, data: bytes, addr: Address | TcpLink) -> None:
        if not data:  # zero-length UDP is legal, and meaningless
            self.dropped += 1
            return
        try:
            first = data[0]
            if 127 < first < 192:
                transport = self.by_addr.get(addr)
                if transport is not None and len(data) >= 12:
                    transport.on_srtp(data, time.monotonic())
                    return
            elif first < 4:
                if addr in self.by_addr or self._admit_unverified(addr):
                    self._on_stun(data, addr)
                else:
                    self.dropped += 1
                return
            elif 19 < first < 64:
                transport = self.by_addr.get(addr)
                if transport is not None:
                    transport.on_dtls(data, addr, time.monotonic())
                    return
            if addr not in self.by_addr:
                self._admit_unverified(addr)  # dropped below anyway: counted towards the address's budget
            self.dropped += 1
        except Exception:
            # One connection's bug must not stop the port: contain it, end that connection only.
            self.errors += 1
            transport = self.by_addr.get(addr)
            log.exception("media error transport=%s addr=%s", transport.id if transport else None, addr)
            if transport is not None:
                transport.fail(Failure.INTERNAL_ERROR)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from a peer that left: its consent timer will end it.
        log.debug("udp error: %s", exc)

    def _on_stun(self, data: bytes, addr: Address) -> None:
        check = parse_check(data)
        if check is not None:  # the usual shape, read without aioice (stun_check.py); anything else below
            transport = self._check_signer(addr, check.username, partial(verify, check))
            if transport is not None:
                self._answer_check(transport, addr, check.use_candidate,
                                   binding_response(check.transaction_id, _mapped(addr), transport.ice_key))
            return
        try:
            request = stun.parse_message(data)
        except (ValueError, struct.error):  # aioice raises struct.error on short fixed-size attributes
            self.dropped += 1
            self._refuse_link(addr, "not a STUN check")
            return
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            self._refuse_link(addr, "not a STUN check")
            return  # indications (keepalives) and stray responses need nothing
        transport = self._check_signer(addr, request.attributes.get("USERNAME", ""), request.check_message_integrity)
        if transport is None:
            return
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = _mapped(addr)
        response.add_message_integrity(transport.ice_key)
        self._answer_check(transport, addr, "USE-CANDIDATE" in request.attributes, bytes(response))

    def _check_signer(self, addr: Address | TcpLink, username: str,
                      signed_with: Callable[[bytes], bool]) -> WebRtcTransport | None:
        """The transport a check's USERNAME names, if the check is signed with its ice-pwd; else None (counted, and
        an ICE-TCP link that sent it refused)."""
        local_ufrag, _, remote_ufrag = username.partition(":")
        transport = self.by_ufrag.get(local_ufrag)
        if transport is None or remote_ufrag != transport.remote_ufrag or not signed_with(transport.ice_key):
            self.dropped += 1
            self._refuse_link(addr, "STUN check for no transport")
            return None
        return transport

    def _answer_check(self, transport: WebRtcTransport, addr: Address | TcpLink, use_candidate: bool,
                      response: bytes) -> None:
        if isinstance(addr, TcpLink):
            addr.verified = True
            addr.send(response)
        else:
            assert self.sock is not None
            try:
                self.sock.sendto(response, addr)
            except OSError:
                pass
        transport.on_binding_request(addr, use_candidate, time.monotonic())

    # --- ICE-TCP links (tcp.py's FrameSink) ---------------------------------------------------------

    def link_opened(self, link: TcpLink) -> bool:
        if sum(1 for other in self.links if not other.verified) >= MAX_UNVERIFIED_LINKS:
            return False
        self.links.add(link)
        self._arm(self._link_deadline(link))
        return True

    def frame_received(self, data: bytes, link: TcpLink) -> None:
        self._receive(data, link)
        if not link.verified and link not in self.by_addr and not link.closed:
            self._refuse_link(link, "first frame is not a valid STUN check")

    def link_closed(self, link: TcpLink) -> None:
        self.links.discard(link)
        if link.refused:
            self.tcp_refused += 1
        transport = self.by_addr.get(link)
        if transport is not None:
            del self.by_addr[link]
            transport.path_lost(link)

    def _refuse_link(self, addr: Address | TcpLink, reason: str) -> None:
        """An ICE-TCP connection that has not passed a check and sends something else: closed (tcp.py)."""
        if isinstance(addr, TcpLink) and not addr.verified:
            addr.close(reason, refused=True)

    # --- time -----------------------------------------------------------------------------------------

    def tick_at(self, transport: WebRtcTransport, when: float) -> None:
        """Tick this transport at the first grid point from `when` on (not before the next one), unless it is
        due sooner already."""
        self._schedule(transport, max(_slot_now(time.monotonic()) + 1, _slot_from(when)))

    def _schedule(self, transport: WebRtcTransport, slot: int) -> None:
        known = self._slot_of.get(transport)
        if known is not None and known <= slot:
            return  # its earlier tick says when it is due next
        self._slot_of[transport] = slot
        heapq.heappush(self._due, (slot, next(self._due_order), transport))
        self._arm(slot)

    def _arm(self, slot: int) -> None:
        """Wake at this grid slot, unless the timer is set for one as early."""
        if self._ticking or self._endpoint is None:  # (not started: unit tests drive `_tick` themselves)
            return
        if self._timer is not None:
            if self._timer_slot <= slot:
                return
            self._timer.cancel()
        self._timer_slot = slot
        delay = max(0.0, slot * TICK_INTERVAL - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        self._ticking = True
        try:
            self._tick(now)
        except Exception:  # a bug here must not stop the port's clock
            self.errors += 1
            log.exception("media port tick failed")
        finally:
            self._ticking = False
            self._arm(self._next_slot(now))

    def _next_slot(self, now: float) -> int:
        """The next grid slot something is due at (never later than IDLE_INTERVAL from now)."""
        current = _slot_now(now)
        slot = current + round(IDLE_INTERVAL / TICK_INTERVAL)
        if self._due:
            slot = min(slot, self._due[0][0])
        if self._on_grid():
            slot = min(slot, self._coarse(current + 1))
        for link in self.links:
            if not link.verified:
                slot = min(slot, self._link_deadline(link))
        return max(slot, current + 1)

    @staticmethod
    def _link_deadline(link: TcpLink) -> int:
        """The slot an ICE-TCP link that is still unverified then is closed at."""
        return math.ceil((link.opened + UNVERIFIED_TIMEOUT) / TICK_INTERVAL)

    def _tick(self, now: float) -> None:
        current = _slot_now(now)
        passed = bisect.bisect_right(self._take_in_slots, current)
        del self._take_in_slots[:passed]
        if passed and self._on_grid():
            self.take_in()
            if self.reports is not None:
                try:
                    self.reports.run(now)
                except Exception:  # the players' reports must not stop every transport's ticks
                    self.errors += 1
                    log.exception("sender reports failed")
        for link in [link for link in self.links if not link.verified]:
            if self._link_deadline(link) <= current:
                link.close("no valid STUN check", refused=True)
        self._tick_transports(now)

    def add_ingest(self, ingest: Ingest) -> None:
        """A publisher's ingest thread started: its queue is taken in on the take-in grid from now on."""
        if not self._on_grid():
            self._start_grid()
        self.ingests.add(ingest)

    def take_reports(self, owner: object, tx: SrtpSession | None, name: Any, consumers: Sequence[Consumer],
                     due: float) -> bool:
        """A player's sender reports go to the core from now on, sent on the take-in grid (reports.py); False if
        they cannot (no core, or a track not on it yet): the player goes on sending them itself."""
        if self.reports is None:
            return False
        idle = not self._on_grid()
        if not self.reports.take(owner, tx, name, consumers, due):
            return False
        if idle:
            self._start_grid()
        return True

    def drop_reports(self, owner: object) -> None:
        if self.reports is not None:
            self.reports.drop(owner)

    @property
    def core_reports(self) -> int:
        """Players' sender reports the compiled core sent (the others are sent in Python)."""
        return self.reports.reports if self.reports is not None else 0

    def _on_grid(self) -> bool:
        """Is there something to do on the take-in grid: an ingest queue, or a player's reports?"""
        return bool(self.ingests) or (self.reports is not None and len(self.reports) > 0)

    def _start_grid(self) -> None:
        self._arm(self._coarse(_slot_now(time.monotonic()) + 1))

    def take_in(self) -> None:
        """The ring and the readers as new as the ingest threads (ingest.py); the rate sampler asks for it too,
        so that the counters it reads are not a tick old."""
        for ingest in list(self.ingests):
            try:
                ingest.take_in()
            except Exception:  # a bug behind one publisher must not stop every transport's ticks
                self.errors += 1
                log.exception("ingest drain error transport=%s", ingest.transport.id)

    def _coarse(self, slot: int) -> int:
        """The first slot at or after `slot` on the coarser grid the ingest queues are taken in on. Its gaps are
        drawn at random (`_take_in_gap`), as far ahead as asked; `_tick` drops the points it has passed."""
        grid = self._take_in_slots
        if not grid:
            grid.append(_slot_now(time.monotonic()) + _take_in_gap())
        while grid[-1] < slot:
            grid.append(grid[-1] + _take_in_gap())
        return grid[bisect.bisect_left(grid, slot)]

    def _due_slot(self, current: int, at: float | None) -> int:
        """The slot a transport that says it is due `at` is ticked at: the next one for None or a time already past;
        else the first take-in from then on, or MAX_LATE after it if that take-in is later."""
        slot = None if at is None else _slot_from(at)
        if slot is None or slot <= current:
            return current + 1
        return min(self._coarse(slot), max(slot, _slot_now(at + MAX_LATE)))

    def _tick_transports(self, now: float) -> None:
        """Tick every transport that is due; each says when it is due again (None: at the next tick)."""
        due = self._due
        current = _slot_now(now)
        while due and due[0][0] <= current:
            slot, _, transport = heapq.heappop(due)
            if self._slot_of.get(transport) != slot:
                continue  # unregistered, or it has an earlier entry (which ticked it)
            del self._slot_of[transport]
            try:
                at = transport.tick(now)
            except Exception:
                self.errors += 1
                log.exception("tick error transport=%s", transport.id)
                transport.fail(Failure.INTERNAL_ERROR)
                continue
            if transport in self.transports:
                self._schedule(transport, self._due_slot(current, at))


def _mapped(addr: Address | TcpLink) -> tuple[str, int]:
    """The address a check came from, as its answer's XOR-MAPPED-ADDRESS gives it back."""
    return addr.peer if isinstance(addr, TcpLink) else addr


def _slot_now(now: float) -> int:
    """The grid slot a wake-up at `now` serves (one a hair early serves the slot it was set for)."""
    return math.floor((now + TIMER_SLACK) / TICK_INTERVAL)


def _slot_from(when: float) -> int:
    """The first grid slot at or after `when`."""
    return math.ceil((when - TIMER_SLACK) / TICK_INTERVAL)


def _take_in_gap() -> int:
    """Slots from one take-in to the next: uniform over (1 ± TAKE_IN_JITTER) × TAKE_IN_INTERVAL. At random, because
    what rides on the grid includes every RTCP report, whose intervals RFC 3550 §6.3.1 wants randomized
    (reports.py, `rtcp_interval_range`); within ±0.4 rather than the RFC's ±0.5, so that a report due half an
    interval after a take-in that ran late is still due by the next one."""
    mean = TAKE_IN_INTERVAL / TICK_INTERVAL
    return random.randint(round(mean * (1 - TAKE_IN_JITTER)), round(mean * (1 + TAKE_IN_JITTER)))
