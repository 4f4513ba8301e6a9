"""The ingest thread (ingest.c) as seen from Python: a publisher's packets forwarded before the event loop wakes.

Without it every publisher packet woke the event loop, and a wake-up of the interpreter cost more than the
compiled core spends forwarding a packet to ten players (docs/per-packet-cost.md, "Third pass"). With it, a
UDP publisher gets a socket of its own (SO_REUSEPORT on the media port, connected to the publisher: the
kernel prefers it for that address), read by a C thread that unprotects each packet and hands the newest
ones of every track whose players are all on the compiled core to `wc_fanout`, per player layout, as
`TrackRouter.deliver` would. Every packet then still reaches Python, through a queue the event loop drains
(`Ingest.drain`), at once when Python must act (a packet the thread did not forward, a gap, a track's first
packet, STUN, DTLS); otherwise the media port takes the queue in (`take_in`, on its take-in grid, about once a
second, with whatever else is due then, and before the rate sampler reads the counters), and the thread wakes
Python itself only for a queue half full or a tick that is BATCH late. The ring, keyframes, NACKs, readers
and statistics run as before, on the packet's own arrival time, up to a tick later; whatever needs the ring
as new as the thread (a player joining, a NACK, a reader leaving) catches up first (`catch_up`).

`MEDIA_LOCK` is the process-wide mutex the threads hold per datagram. While any ingest runs, Python holds
it around everything that uses a session or table a thread may use: the routers' fan-outs and replays,
sender reports and retransmissions (transport.py), the publisher's inbound session, and every change of a
track's groups. A router changes its groups (`set_groups`) only after draining the queue under the lock, so
a packet is never forwarded twice or out of order when players join, start or leave.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from .fanout import ffi, load_library, srtp_function_pointer, context_pointer

if TYPE_CHECKING:
    from .fanout import FanoutCore
    from .producer import Producer
    from .rtp import ExtensionPlan
    from .srtp import SrtpSession
    from .stats import FanoutCost

log = logging.getLogger("webcall.media")


# What an ingest needs of the port, the publisher's transport and a track's router (port.py, transport.py,
# router.py import this module, so it names them only by these shapes).

class IngestPort(Protocol):
    sock: socket.socket | None
    core: FanoutCore | None
    ingest_enabled: bool
    fanout_cost: FanoutCost
    ingest_counts: IngestCounts
    ingests: set[Ingest]  # the port takes their queues in

    def receive_from(self, data: bytes, addr: tuple[str, int]) -> None: ...
    def add_ingest(self, ingest: Ingest) -> None: ...


class IngestTransport(Protocol):
    id: str
    label: str
    addr: object
    srtp_errors: int

    @property
    def rx(self) -> SrtpSession | None: ...
    def on_plain_rtp(self, packet: bytes, now: float, size: int = 0) -> None: ...
    def on_plain_rtcp(self, packet: bytes, now: float) -> None: ...


class IngestRouter(Protocol):
    producer: Producer
    ingest: Ingest | None
    ingest_forwarded: bool

    def sync_ingest(self) -> None: ...

BATCH = 1.75  # s: how long a queued packet waits at most before the thread wakes Python for it. The port
# (port.py's take-in grid, gaps of at most MAX_TAKE_IN_GAP, 1.4 s) takes the queues in first: the thread wakes
# Python only for what is urgent, for a queue half full, or when the port is late.
COUNTERS_EVERY = 0.5  # s: how often a drain reads the thread's counters (/metrics needs them no fresher)
QUEUE = 512  # datagrams a queue holds (WC_INGEST_QUEUE); half of it wakes Python
MAX_GROUPS = 8  # player layouts per track the thread forwards to (WC_INGEST_GROUPS); more: Python forwards
ITEM_FORWARDED, ITEM_RTP, ITEM_RTCP, ITEM_OTHER = 1, 2, 3, 4

ffi.cdef("""
struct wc_plan { int32_t mapped; int32_t mid_id; int32_t mid_len; uint8_t map[256]; uint8_t mid[256]; };
typedef struct wc_ingest wc_ingest;
void wc_media_lock(void);
void wc_media_unlock(void);
wc_ingest *wc_ingest_start(int fd, wc_sender *sender, void *rx, void *unprotect, void *unprotect_rtcp,
                           int batch_us);
void wc_ingest_stop(wc_ingest *g);
int wc_ingest_eventfd(const wc_ingest *g);
int wc_ingest_track(wc_ingest *g, uint32_t ssrc, int64_t highest, int64_t cycles);
int wc_ingest_groups(wc_ingest *g, uint32_t ssrc, int n, const struct wc_plan *const *plans,
                     struct wc_target *const *const *targets, const int *counts, int wake_each);
int wc_ingest_take(wc_ingest *g, char *buf, int *meta, int64_t *arrival_ns);
int wc_ingest_pending(wc_ingest *g);
void wc_ingest_counters(wc_ingest *g, uint64_t *out);
int wc_rtp_split(const char *p, int length, int *csrc_end, int *ext_end, int *end);
int wc_plan_build(const struct wc_plan *plan, const char *p, int csrc_end, int ext_end, char *out, int room);
int wc_plan_size(void);
int wc_ingest_queue_size(void);
""")

_COUNTERS = ("datagrams", "forwarded", "queued", "overflow", "srtp_errors", "wakes", "timed", "timed_players",
             "timed_wall_ns", "timed_cpu_ns")


class IngestCounts:
    """A port's ingest threads together (Prometheus): datagrams read, packets forwarded, packets Python lost
    sight of (a full queue), Python wake-ups."""

    __slots__ = ("datagrams", "forwarded", "overflow", "wakes")

    def __init__(self) -> None:
        self.datagrams = self.forwarded = self.overflow = self.wakes = 0

    def add(self, now: dict[str, int], before: dict[str, int]) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + now[name] - before[name])

    def to_list(self) -> list[int]:
        """For a worker's report to the control process (workers/media_worker.py)."""
        return [getattr(self, name) for name in self.__slots__]

    def add_list(self, values: list[int]) -> None:
        for name, value in zip(self.__slots__, values):
            setattr(self, name, getattr(self, name) + value)


class MediaLock:
    """The process-wide mutex shared with the ingest threads (recursive: locked sections nest). Free while no
    ingest runs: `acquire` then only reads a counter."""

    __slots__ = ("users", "_lib")

    def __init__(self) -> None:
        self.users = 0  # running ingests
        self._lib: Any = None

    def acquire(self) -> bool:
        """Lock if any ingest runs; pass what it returns to `release`."""
        if not self.users:
            return False
        self._lib.wc_media_lock()
        return True

    def release(self, held: bool) -> None:
        if held:
            self._lib.wc_media_unlock()


MEDIA_LOCK = MediaLock()


def plan_struct(plan: ExtensionPlan) -> Any:
    """The plan as ingest.c's `struct wc_plan`, or None when it cannot take it (ids or a mid out of range)."""
    mid = plan.mid
    if any(not (0 < i < 256 and 0 < j < 256) for i, j in plan.mapping.items()):
        return None
    if mid is not None and not (0 < mid[0] < 256 and 0 < len(mid[1]) < 256):
        return None
    struct = ffi.new("struct wc_plan *")
    struct.mapped = 1 if plan.mapping else 0
    for publisher_id, player_id in plan.mapping.items():
        struct.map[publisher_id] = player_id
    if mid is not None:
        struct.mid_id = mid[0]
        struct.mid_len = len(mid[1])
        ffi.memmove(struct.mid, mid[1], len(mid[1]))
    return struct


def bind_beside(port_sock: socket.socket, peer: tuple[str, int]) -> socket.socket:
    """A socket on the media port's address, connected to `peer`: the kernel gives it that peer's datagrams."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
        except OSError:
            pass
        sock.bind(port_sock.getsockname())
        sock.connect(peer)
    except OSError:
        sock.close()
        raise
    return sock


class Ingest:
    """One publisher's ingest thread, and the Python end of its queue."""

    def __init__(self, lib: Any, handle: Any, port: IngestPort, transport: IngestTransport,
                 peer: tuple[str, int]) -> None:
        self.lib = lib
        self.handle = handle
        self.port = port
        self.transport = transport
        self.peer = peer
        self.routers: dict[int, IngestRouter] = {}  # by the producer's SSRC
        self._buf = ffi.new("char[1536]")
        self._meta = ffi.new("int[2]")  # kind, length as it arrived
        self._arrival = ffi.new("int64_t *")
        self._counters = ffi.new("uint64_t[10]")
        self._seen = dict.fromkeys(_COUNTERS, 0)
        self._counters_read = 0.0  # time.monotonic() of the last read
        self._draining = False
        self._fd = lib.wc_ingest_eventfd(handle)

    @classmethod
    def start(cls, port: IngestPort, transport: IngestTransport) -> Ingest | None:
        """An ingest for this connected UDP publisher, or None (no compiled core; or the socket or the thread
        could not be had: the event loop reads its packets, as without)."""
        lib = load_library()
        core, rx, peer = port.core, transport.rx, transport.addr
        if not port.ingest_enabled or lib is None or core is None or rx is None or not isinstance(peer, tuple):
            return None
        try:
            sock = bind_beside(port.sock, peer)
        except OSError as exc:
            log.warning("ingest thread not started transport=%s reason=%s", transport.id, exc)
            return None
        fd = sock.detach()  # the thread's from now on: it closes it when it leaves
        MEDIA_LOCK._lib = lib
        MEDIA_LOCK.users += 1  # from here on Python locks: the thread may use the core's sender and `rx` at once
        handle = lib.wc_ingest_start(fd, core.sender, context_pointer(rx), srtp_function_pointer("srtp_unprotect"),
                                     srtp_function_pointer("srtp_unprotect_rtcp"), round(BATCH * 1e6))
        if handle == ffi.NULL:
            MEDIA_LOCK.users -= 1
            os.close(fd)
            log.warning("ingest thread not started transport=%s reason=cannot start a thread", transport.id)
            return None
        ingest = cls(lib, handle, port, transport, peer)
        asyncio.get_running_loop().add_reader(ingest._fd, ingest.drain)
        port.add_ingest(ingest)
        log.debug("ingest thread started transport=%s %s peer=%s", transport.id, transport.label, peer)
        return ingest

    @property
    def running(self) -> bool:
        return self.handle is not None

    @property
    def pending(self) -> int:
        """Items the thread queued that Python has not taken in yet."""
        return self.lib.wc_ingest_pending(self.handle) if self.handle is not None else 0

    # --- tracks -------------------------------------------------------------------------------------

    def add_track(self, router: IngestRouter) -> None:
        """Forward this track here from now on, whenever its router has groups for us (`set_groups`)."""
        producer = router.producer
        if producer.ssrc is None or self.handle is None:
            return
        held = MEDIA_LOCK.acquire()
        try:
            if self.lib.wc_ingest_track(self.handle, producer.ssrc, producer.highest_seq, producer.cycles) != 0:
                return  # more tracks than the thread keeps: Python forwards this one
            self.routers[producer.ssrc] = router
            router.ingest = self
            producer.catch_up = self.catch_up
            router.sync_ingest()
        finally:
            MEDIA_LOCK.release(held)

    def set_groups(self, router: IngestRouter, groups: list[tuple[ExtensionPlan, Any, int]] | None,
                   wake_each: bool = False) -> None:
        """The (plan, target array, count) groups the thread forwards the router's track to ([]: the track has
        no players), or None: Python forwards every packet itself. Python is woken for every packet then, or
        with `wake_each` (a reader that wants each packet at once); otherwise in batches.

        The caller holds MEDIA_LOCK and has drained the queue (`catch_up`), and keeps the arrays alive until
        it calls this again."""
        ssrc = router.producer.ssrc
        if self.handle is None or ssrc not in self.routers:
            return
        plans = [plan_struct(plan) for plan, _, _ in groups or ()]
        if groups is None or len(groups) > MAX_GROUPS or any(p is None for p in plans):
            plans, groups, wake_each = [], [], True  # Python forwards: it must see each packet at once
        self.lib.wc_ingest_groups(self.handle, ssrc, len(groups), ffi.new("struct wc_plan *[]", plans or 1),
                                  ffi.new("struct wc_target **[]", [a for _, a, _ in groups] or 1),
                                  ffi.new("int[]", [n for _, _, n in groups] or 1), wake_each)

    # --- the queue ------------------------------------------------------------------------------------

    def catch_up(self) -> None:
        """Take in everything the thread queued, holding MEDIA_LOCK throughout: when this returns, the ring is as
        new as the thread's last packet (a player joining, a NACK, a reader leaving, a change of groups)."""
        held = MEDIA_LOCK.acquire()
        try:
            self.take_in()
        finally:
            MEDIA_LOCK.release(held)

    def take_in(self) -> None:
        """Take in what the thread queued, the lock taken per packet only (by wc_ingest_take, and by whatever
        uses a session): the thread goes on forwarding meanwhile instead of waiting for the whole batch. The
        port's tick and the eventfd's wake-ups drain this way."""
        if not self._draining and self.handle is not None:
            self._take_queue()

    def drain(self) -> None:
        """The eventfd is readable: the thread queued something Python must see."""
        try:
            os.read(self._fd, 8)
        except (BlockingIOError, OSError):
            pass
        self.take_in()

    def _take_queue(self) -> None:
        lib, handle, buf, meta, arrival = self.lib, self.handle, self._buf, self._meta, self._arrival
        transport = self.transport
        routers = self.routers
        self._draining = True
        try:
            while self.handle is not None:
                length = lib.wc_ingest_take(handle, buf, meta, arrival)
                if length < 0:
                    break
                data = ffi.buffer(buf, length)[:]
                now = arrival[0] / 1e9
                item = meta[0]
                if item == ITEM_FORWARDED:
                    router = routers.get(int.from_bytes(data[8:12], "big"))
                    if router is not None:
                        router.ingest_forwarded = True
                    try:
                        transport.on_plain_rtp(data, now, meta[1])
                    finally:
                        if router is not None:
                            router.ingest_forwarded = False
                elif item == ITEM_RTP:
                    transport.on_plain_rtp(data, now, meta[1])
                elif item == ITEM_RTCP:
                    transport.on_plain_rtcp(data, now)
                else:
                    self.port.receive_from(data, self.peer)
        finally:
            self._draining = False
        if self.handle is not None and time.monotonic() - self._counters_read >= COUNTERS_EVERY:
            self._read_counters()

    def _read_counters(self) -> None:
        self._counters_read = time.monotonic()
        self.lib.wc_ingest_counters(self.handle, self._counters)
        now = dict(zip(_COUNTERS, self._counters))
        seen, self._seen = self._seen, now
        self.transport.srtp_errors += now["srtp_errors"] - seen["srtp_errors"]
        samples = now["timed"] - seen["timed"]
        if samples:
            self.port.fanout_cost.observe_many(samples, now["timed_wall_ns"] - seen["timed_wall_ns"],
                                               now["timed_players"] - seen["timed_players"],
                                               now["timed_cpu_ns"] - seen["timed_cpu_ns"])
        self.port.ingest_counts.add(now, seen)

    def counters(self) -> dict[str, int]:
        """The thread's counters now (read, and added to the port's, at most every COUNTERS_EVERY otherwise)."""
        if self.handle is not None:
            self._read_counters()
        return dict(self._seen)

    # --- teardown -------------------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Idempotent. The thread stops using anything of ours before this returns; what it queued is
        taken in first (the packets it forwarded still reach the ring and the readers)."""
        if self.handle is None:
            return
        try:  # first: the thread closes the eventfd when it leaves
            asyncio.get_running_loop().remove_reader(self._fd)
        except RuntimeError:  # no running loop (interpreter shutdown): nothing is registered any more
            pass
        held = MEDIA_LOCK.acquire()
        try:
            if not self._draining:
                self._take_queue()
            if self.handle is None:  # a packet taken in stopped us already (a DTLS close_notify, say)
                return
            self._read_counters()
            handle, self.handle = self.handle, None
            self.lib.wc_ingest_stop(handle)
            MEDIA_LOCK.users -= 1
        finally:
            MEDIA_LOCK.release(held)
        self.port.ingests.discard(self)
        for router in self.routers.values():
            router.ingest = None
            router.producer.catch_up = None
        log.debug("ingest thread stopped transport=%s reason=%s counters=%s", self.transport.id, reason,
                  self._seen)
