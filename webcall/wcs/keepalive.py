"""Server pings (spec §2, Keepalive): every established session is pinged once per ping interval, and closed after
`probes` pings in a row without a word from its client.

One timer pings every session, not a task each. A task per session wakes the process at that session's own
instant: 300 players on a 5 s interval were 60 wake-ups a second, and the pongs 60 more, each costing about what
forwarding a packet does (docs/per-packet-cost.md, "Thirteenth pass"). Here the interval is cut into
SLOTS slots on the monotonic clock's grid (multiples of interval / SLOTS: for 5 s, 0.2 s); a session joins the last
slot within one interval of its `connection`, and each wake-up pings all the sessions of its slot together. Their
pongs come back together too. The slots are many and the rate sampler and the media port keep their own
phases, so each wake-up stays short: on a core shared with the ingest thread, the event loop's longer bursts hold
up forwarding (the pings, the rate sampler and the port's take-in lined up on one grid raised the p99 of the added
latency by about 0.5 ms at 300 players).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Protocol

from ..eventloop import TIMER_SLACK
from . import messages as msg

log = logging.getLogger("webcall.wcs")

SLOTS = 25  # per ping interval: for 5 s, a wake-up every 0.2 s at most, each pinging a 25th of the sessions


class Pinged(Protocol):
    id: str
    closed: bool
    missed_pongs: int  # pings since the client last said anything (session.py resets it)

    def send(self, text: str) -> None: ...
    def close(self) -> None: ...


class Keepalive:
    def __init__(self, interval: float, probes: int) -> None:
        self.interval = interval
        self.probes = probes
        self.step = interval / SLOTS
        self._slots: dict[int, dict[Pinged, None]] = {}  # slot → its sessions, in the order they joined
        self._slot_of: dict[Pinged, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = 0
        self._pinging = False  # in the timer's callback, which arms the next wake-up itself
        self._ping = msg.ping()

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, session: Pinged) -> None:
        """Ping this (just established) session from the last slot within one interval on: never later than the
        interval, which a client probing at the same interval (the SDK's receiveProbes) may rely on."""
        now = time.monotonic()
        self._place(session, max(math.floor((now + self.interval) / self.step),
                                 math.floor((now + TIMER_SLACK) / self.step) + 1))

    def discard(self, session: Pinged) -> None:
        slot = self._slot_of.pop(session, None)
        if slot is not None:
            sessions = self._slots[slot]
            del sessions[session]
            if not sessions:
                del self._slots[slot]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._slots.clear()
        self._slot_of.clear()

    def _place(self, session: Pinged, slot: int) -> None:
        self.discard(session)
        self._slots.setdefault(slot, {})[session] = None
        self._slot_of[session] = slot
        if not self._pinging and (self._timer is None or slot < self._timer_slot):
            self._arm(slot)

    def _arm(self, slot: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_slot = slot
        delay = max(0.0, slot * self.step - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = time.monotonic()
        current = max(self._timer_slot, math.floor((now + TIMER_SLACK) / self.step))
        self._pinging = True
        try:
            for slot in sorted(s for s in self._slots if s <= current):
                for session in list(self._slots.get(slot, ())):
                    try:
                        self._ping_one(session, max(slot + SLOTS, current + 1))
                    except Exception:  # one session's failure must not stop everyone's keepalive
                        log.exception("keepalive failed session=%s", session.id)
                        self.discard(session)
        finally:
            self._pinging = False
        if self._slots:
            self._arm(min(self._slots))

    def _ping_one(self, session: Pinged, next_slot: int) -> None:
        if session.closed:
            self.discard(session)
            return
        if session.missed_pongs >= self.probes:
            log.info("keepalive lost session=%s missed=%d", session.id, session.missed_pongs)
            self.discard(session)
            session.close()
            return
        session.missed_pongs += 1
        session.send(self._ping)
        self._place(session, next_slot)
