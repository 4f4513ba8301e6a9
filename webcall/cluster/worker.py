"""A cluster node's media worker: the relay between nodes ends in the worker that holds the stream.

With --workers 2+ a cluster node's media lives in its workers (workers/), so the sealed relay (cluster/sealed.py)
does too: each worker binds its own relay socket between nodes, and the control process's ClusterNode
(cluster/node.py) only signals, through Redis and the workers' channels. This is the worker's side, loaded as
the worker app (`webcall.cluster.worker:setup`, built on media_worker.py's):

- a pulled copy (`in`): another node's stream, received here and held as a relayed source under an id of the
  control process's (as a relayed copy from another worker of this node is), so this worker's players read it
  and the control process relays it on to the node's other workers exactly as it would a local publication;
  its own ring answers its players' NACKs, what it lacks is NACKed (and retried on the worker's tick) to the
  origin, keyframes are asked of the origin;
- a served relay (`out`): a source of this worker (a publication, or a pulled copy when relays chain) sent to
  another node's worker, which asked for it; the current GOP first, when its first keepalive arrives.

Liveness is kept here, as ClusterNode keeps it in one process: a keepalive every KEEPALIVE seconds both ways,
and `cluster_ttl` seconds of silence end the relay; the control process hears of every end (`cluster` events)
and decides the rest (the players' reason, the name, lingering).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..media.router import Router
from ..streams.registry import EndReason
from ..workers.main import WorkerContext
from ..workers.media_worker import MediaEvents, MediaWorker, RelayOut, WorkerSource, relayed_router
from ..workers.media_worker import setup as media_setup
from ..workers.relay import Address
from .sealed import DOWN, UP, Link, SealedRelay

log = logging.getLogger("webcall.cluster")

KEEPALIVE = 0.5  # seconds between keepalives on each relay, both ways (as cluster/node.py)
TICK = 0.1  # seconds between liveness checks


@dataclass
class PulledIn:
    id: int  # the source id (the control process's)
    link: Link
    router: Router
    started: float = field(default_factory=time.monotonic)
    ended: bool = False  # told the control process; waiting for its `in_stop`


@dataclass
class ServedOut:
    source: int  # the source id of this worker sent
    link: Link
    created: float = field(default_factory=time.monotonic)
    out: RelayOut | None = None


class ClusterRelays:
    """One worker's relay socket between nodes, its pulled copies and the relays it serves."""

    def __init__(self, worker: MediaWorker) -> None:
        self.worker = worker
        self.channel = worker.channel
        self.ttl = worker.settings.cluster_ttl
        self.relay: SealedRelay | None = None
        self.ins: dict[int, PulledIn] = {}  # by relay id
        self.outs: dict[tuple[int, Address], ServedOut] = {}
        self.retransmitted = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        callbacks: dict[str, Any] = dict(on_packet=self._packet, on_keyframe_request=self._keyframe_request,
                                         on_nack=self._nack, on_end=self._end, on_ready=self._ready,
                                         on_sender_report=self._sender_report)
        port = port + self.worker.ctx.index if port else 0
        try:
            self.relay = await SealedRelay.bind(host, port, **callbacks)
        except OSError as exc:  # an address of a NAT in front of us: bind to any (as cluster/node.py)
            log.info("cluster relay: cannot bind %s (%s), binding 0.0.0.0", host, exc)
            self.relay = await SealedRelay.bind("0.0.0.0", port, **callbacks)
        self.relay.test_loss = float(os.environ.get("WEBCALL_RELAY_TEST_LOSS") or 0.0)  # tests only (relay.py)
        self.worker.ctx.info["cluster_relay"] = self.relay.address[1]
        for name in ("in", "in_stop", "out", "out_stop"):
            self.channel.on_event(f"cluster_{name}", getattr(self, f"_on_{name}"))
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="worker-cluster-tick")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for key in list(self.outs):
            self._close_out(key, EndReason.PUBLISHER_STOPPED.value, tell=False)
        for rid in list(self.ins):
            self._close_in(rid, "node stopping")
        if self.relay is not None:
            self.relay.close()

    def _notify(self, what: str, **args: Any) -> None:
        self.channel.notify("cluster", what=what, **args)

    # --- commands of the control process ----------------------------------------------------------------

    def _on_in(self, id: int, rid: int, name: str, src: list, down: str, up: str, tracks: list[dict]) -> None:
        """Pull: hold another node's stream as source `id` (relay `rid`, from its worker at `src`)."""
        assert self.relay is not None
        worker = self.worker
        source = WorkerSource(name, Router({}))
        events = MediaEvents(worker, id, source)  # the control process's view hears the picture's size
        router = relayed_router(worker.port, rid, tracks, lambda: self.relay,
                                on_keyframe=lambda p, w, h: w and (w, h) != (source.width, source.height)
                                and events.on_video_size(w, h))
        source.router, source.live = router, True
        worker.sources[id] = source
        worker.relays_in[id] = router  # the worker's tick retries its NACKs (its loopback relay never feeds it)
        worker.reported_copies.add(id)  # its counters fill the control process's view, as a publication's
        link = self.relay.pull(rid, (str(src[0]), int(src[1])), bytes.fromhex(down), bytes.fromhex(up))
        self.ins[rid] = PulledIn(id, link, router)
        for _ in range(2):  # ready: the origin starts sending (GOP first) on the first one that arrives
            self.relay.keepalive(link, UP)

    def _on_in_stop(self, id: int, reason: str = "") -> None:
        for rid, pulled in list(self.ins.items()):
            if pulled.id == id:
                self._close_in(rid, reason)

    def _close_in(self, rid: int, reason: str) -> None:
        pulled = self.ins.pop(rid, None)
        if pulled is None:
            return
        if self.relay is not None:
            self.relay.unpull(rid, reason)
        self.worker._on_relay_stop(pulled.id)  # closes the copy and what it fed on this worker
        self.worker.reported_copies.discard(pulled.id)

    def _on_out(self, rid: int, source: int, dest: list, down: str, up: str) -> None:
        """Serve source `source` of this worker to the node worker at `dest` once it says it is ready."""
        assert self.relay is not None
        link = self.relay.offer((str(dest[0]), int(dest[1])), rid, bytes.fromhex(down), bytes.fromhex(up))
        self.outs[(rid, link.peer)] = ServedOut(source, link)

    def _on_out_stop(self, rid: int, dest: list, reason: str = "") -> None:
        self._close_out((rid, (str(dest[0]), int(dest[1]))), reason, tell=False)

    def _close_out(self, key: tuple[int, Address], reason: str, *, tell: bool) -> None:
        served = self.outs.pop(key, None)
        if served is None:
            return
        if served.out is not None:
            served.out.close()
        if self.relay is not None:
            self.relay.withdraw(served.link, reason)
        if tell:  # ended here (the edge is gone, or said so): the control process counts its relays
            self._notify("out_ended", rid=key[0], dest=list(key[1]))

    # --- the relay's events ------------------------------------------------------------------------------

    def _ready(self, link: Link) -> None:
        served = self.outs.get((link.stream_id, link.peer))
        if served is None or served.out is not None or self.relay is None:
            return
        held = self.worker.sources.get(served.source)
        if held is None or held.router is None:
            return
        served.out = RelayOut(held, self.relay.sealed_sender(link))

    def _packet(self, rid: int, track: int, packet: bytes) -> None:
        pulled = self.ins.get(rid)
        if pulled is not None:
            tracks = list(pulled.router.tracks.values())
            if track < len(tracks):
                tracks[track].producer.receive(packet, time.monotonic())

    def _sender_report(self, rid: int, track: int, ntp: int, rtp: int) -> None:
        pulled = self.ins.get(rid)
        if pulled is not None:
            tracks = list(pulled.router.tracks.values())
            if track < len(tracks):
                tracks[track].producer.on_sender_report(ntp, rtp, time.monotonic())

    def _served(self, rid: int) -> list[RelayOut]:
        return [s.out for (r, _), s in self.outs.items() if r == rid and s.out is not None]

    def _keyframe_request(self, rid: int, track: int) -> None:
        for out in self._served(rid):
            if track < len(out.tracks):
                out.tracks[track].producer.request_keyframe(time.monotonic())

    def _nack(self, rid: int, track: int, seqs: list[int]) -> None:
        for out in self._served(rid):
            if track < len(out.tracks):
                producer = out.tracks[track].producer
                for seq in seqs:
                    packet = producer.lookup(seq)
                    if packet is not None and out.sender.send(track, packet):
                        self.retransmitted += 1

    def _end(self, link: Link, reason: str) -> None:
        pulled = self.ins.get(link.stream_id)
        if pulled is not None and pulled.link is link:  # the origin's stream ended
            if not pulled.ended:
                pulled.ended = True
                self._notify("in_ended", id=pulled.id, reason=reason)
            return
        key = (link.stream_id, link.peer)
        served = self.outs.get(key)
        if served is not None and served.link is link:  # the edge needs it no more
            self._close_out(key, "", tell=True)

    # --- liveness, sender reports, counters ---------------------------------------------------------------

    async def _tick(self) -> None:
        last_keepalive = last_stats = 0.0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            keepalive = now - last_keepalive >= KEEPALIVE
            if keepalive:
                last_keepalive = now
            try:
                self._tick_once(now, keepalive)
                if now - last_stats >= self.worker.settings.stats_interval:
                    last_stats = now
                    self._notify("stats", **self.stats())
            except Exception:
                log.exception("cluster tick failed")

    def _tick_once(self, now: float, keepalive: bool) -> None:
        relay = self.relay
        assert relay is not None
        for pulled in list(self.ins.values()):
            if pulled.ended:
                continue
            if now - (pulled.link.heard or pulled.started) > self.ttl:
                pulled.ended = True
                self._notify("in_ended", id=pulled.id, reason=EndReason.ORIGIN_LOST.value, why="origin silent")
            elif keepalive:
                relay.keepalive(pulled.link, UP)
        for key, served in list(self.outs.items()):
            held = self.worker.sources.get(served.source)
            if held is None or held.closed:  # its stream ended here (the control process may say why first)
                self._close_out(key, EndReason.PUBLISHER_STOPPED.value, tell=True)
            elif now - (served.link.heard or served.created) > self.ttl:
                self._close_out(key, "", tell=True)  # the edge is gone: nothing into the void
            elif served.out is not None:
                if keepalive:
                    relay.keepalive(served.link, DOWN)
                out = served.out
                for index, track in enumerate(out.tracks):
                    p = track.producer
                    if p.sr_arrival and p.sr_arrival != out.reported_srs[index]:
                        out.reported_srs[index] = p.sr_arrival
                        relay.sender_report(served.link, index, p.sr_ntp, p.sr_rtp)

    def stats(self) -> dict[str, Any]:
        relay = self.relay
        counters = {} if relay is None else {**asdict(relay.stats), "unsealed": relay.unsealed,
                                              "auth_failed": relay.auth_failed}
        return {"relay": counters, "retransmitted": self.retransmitted,
                "synced": {p.id: all(t.producer.sr_arrival for t in p.router.tracks.values())
                           for p in self.ins.values()}}


async def setup(ctx: WorkerContext) -> None:
    """The worker app of a cluster node with workers: media_worker.py's, plus the relay socket between nodes."""
    stops: list[Any] = []
    worker = await media_setup(ctx, stops)
    relays = ClusterRelays(worker)
    await relays.start(worker.settings.cluster_relay_host or ctx.media_host, max(worker.settings.cluster_relay_port, 0))
    stops.append(relays.stop)
