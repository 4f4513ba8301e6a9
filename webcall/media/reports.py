"""Players' sender reports, built by the compiled core for every player that is due, in one call per take-in.

Every player gets an RTCP sender report per track about once a second (RFC 3550 §6.4.1), its tracks' SRs in one
compound packet. In Python that is, per player and second, a tick of its transport, two struct packs, an SRTCP
protect through cffi and a sendto of its own, and cold: at 300 players the event loop spent about 10 ms of CPU a
second more on them than it does now, about 6 % of the server (docs/per-packet-cost.md, "Twelfth pass"). Once every
track of a player is on the compiled core (each Consumer has its `struct wc_target`, so an IPv4 UDP path and keys),
the player hands its reports to `SenderReports` (`take`): a `struct wc_reporter` with its targets, its session and
address, its tracks' clocks and when it is next due. The media port calls `run` on its take-in grid; fanout.c's
`wc_sender_reports` builds, protects and sends the reports of the players due, one sendmmsg per 64, and draws each
one's next interval. Until then, and without the core, `PlayerEndpoint.on_tick` builds them in Python, as before;
`tests/unit/test_sender_reports.py` holds the two to the same bytes.

The counts come from the targets, which the fan-out keeps, plus what Python sent before the target existed (a GOP
replay). The RTP time comes from one `struct wc_clock` per publisher track, which `run` sets to
`Producer.rtp_time_at` of the call's instant; each player adds its own timestamp offset.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .fanout import SEND_CAPACITY, FanoutCore, context_pointer, ffi, srtp_function_pointer
from .ingest import MEDIA_LOCK
from .producer import Producer, ntp_now

if TYPE_CHECKING:
    from .consumer import Consumer
    from .srtp import SrtpSession

RTCP_INTERVAL = 1.0  # s: RFC 3550's interval for our reports (randomised, `rtcp_interval_range`)
RTCP_WINDOW = (0.5 * RTCP_INTERVAL, 1.5 * RTCP_INTERVAL)  # s from one report to the next (RFC 3550 §6.3.1)
MAX_TRACKS = 2  # a player's tracks in one compound report (fanout.c: WC_REPORT_TRACKS)
_NS = 1_000_000_000


def rtcp_interval_range(late_by: float) -> tuple[float, float]:
    """RFC 3550 §6.3.1: intervals drawn from 0.5–1.5 × RTCP_INTERVAL (`RTCP_WINDOW`), so that reports of
    connections made together do not stay together. A report that may go out up to `late_by` after it is due is
    drawn from that much less than 1.5 ×, so that on the wire the intervals stay within the window and still
    average about 1 ×. The core's reports go only at the port's take-ins, whose gaps are 0.6–1.4 s at random
    (port.py, "Time"): the range closes to 0.5 × (each report is due half a second after the last and goes out at
    the next take-in), so the interval is the take-in grid's gap, random as the RFC asks. The players of one port
    go together, in one sendmmsg: each connection's intervals are random, not one's reports against another's."""
    low, high = RTCP_WINDOW
    return low, max(low, high - late_by)


class _Reporter:
    """One player's `struct wc_reporter`, and the objects its pointers lead to (kept alive with it)."""

    __slots__ = ("struct", "refs", "producers")

    def __init__(self, struct: Any, refs: tuple, producers: list[Producer]) -> None:
        self.struct = struct
        self.refs = refs
        self.producers = producers


class SenderReports:
    """The reports of a media port's players on the compiled core (module docstring)."""

    def __init__(self, core: FanoutCore, sock: socket.socket, interval: tuple[float, float],
                 slack: float) -> None:
        lib = core.lib
        protect_rtcp = srtp_function_pointer("srtp_protect_rtcp")
        sender = lib.wc_sender_new(sock.fileno(), SEND_CAPACITY, protect_rtcp)
        if sender == ffi.NULL:
            raise MemoryError("wc_sender_new")
        self._lib = lib
        self._sender = ffi.gc(sender, lib.wc_sender_free)  # its own: the fan-out's counts stay media only
        self._protect_rtcp = protect_rtcp
        low, high = interval
        self._min_ns = round(low * _NS)
        self._span_ns = max(1, round((high - low) * _NS))
        self._slack_ns = round(slack * _NS)  # a report due this soon after `run`'s instant goes in it
        self._reporters: dict[object, _Reporter] = {}
        self._clocks: dict[Producer, tuple[Any, int]] = {}  # a publisher track's `struct wc_clock`, and its users
        self._array: Any = None  # the `struct wc_reporter *[]` of the current reporters; None: to be rebuilt
        self.reports = 0  # compound reports sent (queued to the kernel)

    def __len__(self) -> int:
        return len(self._reporters)

    @property
    def dropped(self) -> int:
        """Reports the kernel refused (a full socket buffer)."""
        return self._lib.wc_sender_dropped(self._sender)

    def take(self, owner: object, tx: SrtpSession | None, name: Any, consumers: Sequence[Consumer],
             due: float) -> bool:
        """Report for `owner` (a player) from now on, next at `due` (monotonic), if every one of its tracks is on
        the core; False (nothing changes) if not: it goes on reporting in Python."""
        if owner in self._reporters or tx is None or name is None or not 0 < len(consumers) <= MAX_TRACKS:
            return False
        targets = [consumer.target for consumer in consumers]
        if any(target is None for target in targets):
            return False
        struct = ffi.new("struct wc_reporter *")
        struct.srtp = context_pointer(tx)
        struct.name = name
        struct.tracks = len(consumers)
        for k, (consumer, target) in enumerate(zip(consumers, targets)):
            struct.targets[k] = target
            struct.clocks[k] = self._use_clock(consumer.producer)
            packets, octets = consumer.sent_in_python
            struct.base_packets[k] = packets & 0xFFFFFFFF
            struct.base_octets[k] = octets & 0xFFFFFFFF
        struct.due_ns = round(due * _NS)
        struct.rng = secrets.randbits(64) | 1  # xorshift's state must not be 0
        self._reporters[owner] = _Reporter(struct, (tx, name, targets), [c.producer for c in consumers])
        self._array = None
        return True

    def drop(self, owner: object) -> None:
        """`owner` is gone (or reports in Python again): no more reports for it."""
        reporter = self._reporters.pop(owner, None)
        if reporter is None:
            return
        self._array = None
        for producer in reporter.producers:
            clock, users = self._clocks[producer]
            if users > 1:
                self._clocks[producer] = (clock, users - 1)
            else:
                del self._clocks[producer]

    def _use_clock(self, producer: Producer) -> Any:
        clock, users = self._clocks.get(producer, (None, 0))
        if clock is None:
            clock = ffi.new("struct wc_clock *")
        self._clocks[producer] = (clock, users + 1)
        return clock

    def run(self, now: float) -> int:
        """Send the reports due by `now` (monotonic); returns how many went out."""
        if not self._reporters:
            return 0
        ntp = ntp_now()
        for producer, (clock, _) in self._clocks.items():
            rtp = producer.rtp_time_at(now, ntp)
            clock.valid = rtp is not None
            clock.rtp = rtp or 0
        if self._array is None:
            self._array = ffi.new("struct wc_reporter *[]", [r.struct for r in self._reporters.values()])
        now_ns = round(now * _NS)
        held = MEDIA_LOCK.acquire()  # an ingest thread may be protecting RTP with these sessions
        try:
            sent = self._lib.wc_sender_reports(self._sender, self._array, len(self._reporters), now_ns,
                                               now_ns + self._slack_ns, ntp, self._protect_rtcp, self._min_ns,
                                               self._span_ns)
        finally:
            MEDIA_LOCK.release(held)
        self.reports += sent
        return sent
