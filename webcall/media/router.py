"""Routers: who reads a publication, and the fan-out of each packet to them.

A `Router` belongs to one publication (mediasoup's Router, MediaMTX's stream); it has one `TrackRouter` per
incoming track. The producer (media/producer.py) hands every stored packet to its track router's
`deliver()`, which serves two kinds of reader:

1. WebRTC players (`Consumer`s), grouped by header-extension layout ("plan"): the compiled fan-out core
   (fanout.py) serves all started players of a group in one call; a player that has not started yet (it waits
   for a keyframe to fix its offsets), or every player when there is no core, is served in Python.
2. Python readers, plain callables `reader(packet, keyframe)`: recording now; muxers, relays and transcoders
   next. A reader must not block: the recorder queues to its own thread, an asyncio consumer goes behind a
   `QueuedReader` (media/readers.py). One that raises is detached and counted; the others never notice.

Work that depends on a plan but not on a player (extension rewriting) is done once per plan, not per player.

With an ingest thread (ingest.py), the thread forwards the track's packets to the core's groups itself while
every player is started and on the core; `deliver` then gets them afterwards with `ingest_forwarded` set, and
does the rest (readers). Changes to the groups are made under MEDIA_LOCK after taking in what the thread
queued, and handed to the thread (`sync_ingest`).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from time import perf_counter_ns, thread_time_ns
from typing import TYPE_CHECKING

from .ingest import MEDIA_LOCK
from .producer import Producer
from .rtp import ExtensionPlan, parse_extensions, rewrite, split
from .stats import FANOUT_SAMPLE_MASK

if TYPE_CHECKING:
    from .consumer import Consumer
    from .fanout import FanoutCore
    from .ingest import Ingest
    from .srtp import SendBatch
    from .stats import FanoutCost

log = logging.getLogger("webcall.media")

REPLAY_MAX_PACKETS = 400  # replay the current GOP to a new player only if it is this short
_TS = struct.Struct("!I")

Reader = Callable[[bytes, bool], None]  # (packet as stored in the ring, starts a keyframe)


class TrackRouter:
    """The readers of one producer, and the per-packet fan-out to them."""

    def __init__(self, producer: Producer, *, core: FanoutCore | None = None, batch: SendBatch | None = None,
                 fanout_cost: FanoutCost | None = None) -> None:
        self.producer = producer
        self.kind = producer.kind
        self.core = core  # the port's compiled fan-out core, when there is one
        self.batch = batch  # the port's sendmmsg batch, when the platform has sendmmsg
        self.fanout_cost = fanout_cost  # every FANOUT_SAMPLE_EVERY-th fan-out is timed into it
        self.consumers: list[Consumer] = []
        self.readers: tuple[Reader, ...] = ()
        self.reader_errors = 0
        self.fanouts = 0
        # Per player layout: (plan, consumers served in Python, the core's target array, its length, the
        # promoted consumers — kept here so the targets the array points to stay alive while it is used).
        self._groups: list[tuple[ExtensionPlan, list[Consumer], object, int, list[Consumer]]] = []
        self.ingest: Ingest | None = None  # the publisher's ingest thread, when it has this track
        self.ingest_forwarded = False  # set while `deliver` runs for a packet the thread already forwarded
        self.closed = False
        self._all_on_core = True  # every player is on the core (none is served in Python; true of none)
        self._prompt_readers: set[Reader] = set()  # readers that want each packet at once (add_reader)
        producer.deliver = self.deliver

    # --- the hot path -----------------------------------------------------------------------------

    def deliver(self, packet: bytes, ext_seq: int, ts: int, keyframe: bool, csrc_end: int, ext_end: int,
                end: int) -> None:
        if self.readers:
            for reader in self.readers:
                try:
                    reader(packet, keyframe)
                except Exception:  # one reader's bug must not reach the publisher or the other readers
                    self._reader_failed(reader)
        if not self._groups or (self.ingest_forwarded and self._all_on_core):
            return  # (the ingest thread forwarded it to every player)
        elements = parse_extensions(packet, csrc_end, ext_end) if ext_end > csrc_end else None
        csrc = packet[12:csrc_end]
        payload = packet[ext_end:]
        b0 = packet[0] & 0xEF
        marker = packet[1] & 0x80
        fanouts = self.fanouts = self.fanouts + 1
        started = 0 if fanouts & FANOUT_SAMPLE_MASK else perf_counter_ns()  # time 1 fan-out in 64
        cpu_started = thread_time_ns() if started else 0
        batch = self.batch
        core = self.core
        size = end - ext_end
        promote = False
        forwarded = self.ingest_forwarded  # the core's groups had it from the ingest thread
        held = MEDIA_LOCK.acquire()
        try:
            for plan, consumers, targets, count, _ in self._groups:
                if forwarded and not consumers:
                    continue
                ext = plan.build(elements)
                tail = csrc + ext + payload
                b0_out = b0 | 0x10 if ext else b0
                if count and not forwarded:
                    core.fanout(core.sender, targets, count, tail, len(tail), b0_out, marker, ext_seq, ts, size)
                for consumer in consumers:
                    consumer.forward(b0_out, marker, ext_seq, ts, tail, keyframe, size, batch)
                    if core is not None and consumer.seq_offset is not None and consumer.transport.sockaddr is not None:
                        promote = True  # (ICE-TCP and IPv6 players have no sockaddr: they stay here, media/tcp.py)
        finally:
            if batch is not None and batch.count:
                batch.flush()  # one sendmmsg for every player of this packet
            MEDIA_LOCK.release(held)
        if promote:
            self._promote_started()
        if started and self.fanout_cost is not None and not forwarded:
            self.fanout_cost.observe(perf_counter_ns() - started, len(self.consumers), thread_time_ns() - cpu_started)

    # --- Python readers ---------------------------------------------------------------------------

    def add_reader(self, reader: Reader, batched: bool = False) -> None:
        """`batched`: the reader may take packets a few milliseconds late (a recording). Otherwise (a relay to
        another worker, a feed for MSE or WSPlayer viewers) an ingest thread wakes Python for every packet."""
        self.readers = (*self.readers, reader)
        if not batched:
            self._prompt_readers.add(reader)
        self._update_ingest()

    def remove_reader(self, reader: Reader) -> None:
        if self.ingest is not None:
            self.ingest.catch_up()  # a reader that leaves now gets what arrived before now (a recording's end)
        self.readers = tuple(r for r in self.readers if r is not reader)
        self._prompt_readers.discard(reader)
        self._update_ingest()

    def _update_ingest(self) -> None:
        if self.ingest is not None:
            held = MEDIA_LOCK.acquire()
            try:
                self.sync_ingest()
            finally:
                MEDIA_LOCK.release(held)

    def _reader_failed(self, reader: Reader) -> None:
        self.reader_errors += 1
        self.remove_reader(reader)
        log.exception("reader failed and was detached kind=%s reader=%r", self.kind, reader)

    # --- WebRTC players ---------------------------------------------------------------------------

    def attach(self, consumer: Consumer, now: float) -> None:
        """Start forwarding to a player: replay the current GOP if it is short, and ask for a keyframe."""
        held = MEDIA_LOCK.acquire()
        try:
            if self.ingest is not None:
                self.ingest.catch_up()  # what the thread forwarded before this player came is not for it
            if self.closed:
                return  # what it took in was the publisher's hang-up: its publication ended meanwhile
            self.consumers.append(consumer)
            self._regroup()
            producer = self.producer
            if producer.kind != "video":
                return
            gop = producer.current_gop(REPLAY_MAX_PACKETS)
            replayed = gop is not None and gop[-1][0] == producer.newest_ext_seq  # whole: no hole before the newest
            if replayed:
                for index, (ext_seq, packet) in enumerate(gop):
                    b0, head, payload = rewrite(packet, consumer.plan)
                    _, ext_end, end = split(packet)
                    consumer.forward(b0, packet[1] & 0x80, ext_seq, _TS.unpack_from(packet, 4)[0], head + payload,
                                     index == 0, end - ext_end)
        finally:
            MEDIA_LOCK.release(held)
        if not replayed or now - producer.last_keyframe_request > 2.0:
            producer.request_keyframe(now)

    def detach(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            self.consumers.remove(consumer)
            self._regroup()

    def _promote_started(self) -> None:
        """Hand players that have their offsets (and an address) to the compiled core, from the next packet on."""
        core = self.core
        changed = False
        for consumer in self.consumers:
            if consumer.target is None and consumer.seq_offset is not None:
                changed = consumer.promote(core) or changed
        if changed:
            self._regroup()

    def _regroup(self) -> None:
        held = MEDIA_LOCK.acquire()
        try:
            if self.ingest is not None:
                self.ingest.catch_up()  # the packets queued before the change are forwarded as before it
            old = self._groups  # alive until the thread has the new arrays
            groups: dict[tuple, tuple[ExtensionPlan, list[Consumer], list[Consumer]]] = {}
            for consumer in self.consumers:
                _, slow, fast = groups.setdefault(consumer.plan.key, (consumer.plan, [], []))
                (fast if consumer.target is not None else slow).append(consumer)
            core = self.core
            self._groups = [
                (plan, slow, core.target_array([c.target for c in fast]) if fast and core else None,
                 len(fast) if core else 0, fast)
                for plan, slow, fast in groups.values()
            ]
            self._all_on_core = all(not slow and count for _, slow, _, count, _ in self._groups)
            self.sync_ingest()
            del old
        finally:
            MEDIA_LOCK.release(held)

    def sync_ingest(self) -> None:
        """Give the ingest thread this track's groups: all of them while every player is on the core, else none
        (a player served in Python needs every packet in order through `deliver`)."""
        ingest = self.ingest
        if ingest is None:
            return
        if self._all_on_core:
            ingest.set_groups(self, [(plan, targets, count) for plan, _, targets, count, _ in self._groups],
                              wake_each=bool(self._prompt_readers))
        else:
            ingest.set_groups(self, None)

    def close(self) -> None:
        self.closed = True
        self._prompt_readers.clear()
        if self.ingest is not None:
            held = MEDIA_LOCK.acquire()
            try:
                self.ingest.set_groups(self, None)
            finally:
                MEDIA_LOCK.release(held)
        self.consumers.clear()
        self.readers = ()
        self._groups = []
        self.producer.close()


class Router:
    """The routers of one publication's tracks, by kind ("audio", "video")."""

    def __init__(self, tracks: dict[str, TrackRouter]) -> None:
        self.tracks = tracks

    @property
    def producers(self) -> dict[str, Producer]:
        return {kind: track.producer for kind, track in self.tracks.items()}

    def close(self) -> None:
        for track in self.tracks.values():
            track.close()
