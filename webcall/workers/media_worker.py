"""The media code of a worker process: its UDP media port, publishers, players, relays, recorders, snapshots.

Plugged into the worker entry point (`python -m webcall.workers.main --app webcall.workers.media_worker:setup
--settings JSON`). The control process speaks to it in ids: it writes every SDP answer itself (ICE credentials
and SSRCs included) and tells the worker what to build; the worker reports media events and counters back.
It never sees a WCS message.

Sources by id: a publisher of this worker (its id) or a relayed copy of another worker's publisher (the relay's
id). A relayed source has its own ring: its players' NACKs and late joiners are answered here, and what this
worker lacks (a lost packet, a keyframe) is asked of the publisher's worker over the relay (workers/relay.py),
and a NACK that goes unanswered is retried on this worker's tick, as a publisher's would be.

Counters go to the control process every `stats_interval` (the `stats` event), the relay socket's included.
Test-only: WEBCALL_RELAY_TEST_LOSS (a fraction, read at start) makes the relay socket drop that share of the
relayed media it receives (relay.py's `test_loss`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..debug import DEBUG_ENV, debug_heap, debug_objects
from ..media.dtls import DtlsIdentity
from ..media.endpoints import PlayerEndpoint, PublisherEndpoint
from ..media.failures import Failure
from ..media.plane import MediaPlane
from ..media.port import TICK_INTERVAL, MediaPort
from ..media.producer import Producer, SenderClock
from ..media.recorder import Recorder, RecorderOptions
from ..media.router import Router, TrackRouter
from ..streams.snapshots import SnapshotError, Snapshotter
from ..transcode.pipeline import Feed
from ..transcode.rendition import Rendition
from .main import WorkerContext
from .relay import RelayEndpoint, RelaySender
from .wire import fanout_cost_to_wire, negotiation_from_wire, track_from_wire

log = logging.getLogger("webcall.workers.media")


@dataclass
class Settings:
    """What a worker's media plane needs (sent by the control process as --settings)."""

    connect_timeout: float = 10.0
    consent_timeout: float = 30.0
    max_bitrate: int = 2_500_000
    fanout_core: str = "auto"
    fanout_threads: int = 1
    ingest: str = "auto"
    snapshot_timeout: float = 3.0
    stats_interval: float = 0.5
    rtp_activity_timeout: float = 5.0
    bitrate_ceiling: int = 0  # bit/s a publisher may send for bitrate_grace; 0 = none
    bitrate_grace: float = 5.0
    keyframe_interval: float = 2.0  # seconds: a publisher's keyframe older than this is asked for again; 0 = off
    max_unverified_datagrams: int = 0  # this worker's port limits (webcall/limits.py); 0 = none
    max_dtls_handshakes: int = 0
    media_tcp_port: int = -1  # ICE-TCP (media/tcp.py): -1 off, 0 any free port, else this + the worker's index
    # A cluster node's workers (cluster/worker.py): the relay between nodes ends in each worker.
    cluster_relay_host: str = ""  # where the worker's relay socket between nodes binds
    cluster_relay_port: int = -1  # -1 off, 0 any free port, else this + the worker's index
    cluster_ttl: float = 3.0  # seconds of silence that end a relay between nodes


class WorkerSource:
    """A source as the worker's snapshotter sees it (streams/registry.py's Source)."""

    def __init__(self, name: str, router: Router) -> None:
        self.name = name
        self.router: Router | None = router
        self.width = self.height = 0
        self.live = False
        self.closed = False


class MediaEvents:
    """Turns one endpoint's media events into channel events, tagged with its id."""

    def __init__(self, worker: MediaWorker, endpoint_id: int, source: WorkerSource | None = None) -> None:
        self.worker, self.id, self.source = worker, endpoint_id, source

    def _send(self, what: str, **args: Any) -> None:
        self.worker.channel.notify("media", id=self.id, what=what, **args)

    def on_connected(self) -> None:
        self._send("connected")

    def on_failed(self, reason: Failure) -> None:
        self.worker.forget(self.id)
        self._send("failed", reason=str(reason))

    def on_first_media(self) -> None:
        if self.source is not None:
            self.source.live = True
        self._send("first_media")

    def on_video_size(self, width: int, height: int) -> None:
        if self.source is not None:
            self.source.width, self.source.height = width, height
        self._send("video_size", width=width, height=height)


class RelayOut:
    """A source of this worker sent to another worker: one reader per track on its router."""

    def __init__(self, source: WorkerSource, sender: RelaySender) -> None:
        self.source, self.sender = source, sender
        assert source.router is not None
        self.tracks = list(source.router.tracks.values())  # track index on the wire = position here
        self.reported_srs = [0.0] * len(self.tracks)  # sr_arrival of the last sender report passed on
        self.readers = []
        for index, track in enumerate(self.tracks):
            # The current GOP first: the receiving worker's first player starts from its ring at once, as it
            # would on this worker, instead of waiting for the next keyframe.
            for _, packet in track.producer.current_gop() or ():
                sender.send(index, packet)
            reader = self._reader(index)
            track.add_reader(reader)
            self.readers.append(reader)

    def _reader(self, index: int):
        send = self.sender.send

        def reader(packet: bytes, keyframe: bool) -> None:
            send(index, packet)
        return reader

    def close(self) -> None:
        for track, reader in zip(self.tracks, self.readers):
            track.remove_reader(reader)
        self.sender.close()


def relayed_router(port: MediaPort, rid: int, tracks: list[dict], relay: Callable[[], Any],
                   on_keyframe: Callable[[Producer, int, int], None]) -> Router:
    """The producers and track routers of a copy that relay `rid` brings in (from another worker or node).

    Their NACKs and keyframe requests go back over the relay that `relay()` returns when they are sent (a
    `RelayEndpoint` or a cluster `SealedRelay`; nothing once it is None). One SenderClock for all tracks: the
    publisher's, rebuilt from the sender reports the sending side passes on.
    """
    def send_nack(index: int) -> Callable[[Producer, list[int]], None]:
        def send(producer: Producer, seqs: list[int]) -> None:
            if (endpoint := relay()) is not None:
                endpoint.nack(rid, index, seqs)
        return send

    def send_keyframe_request(index: int) -> Callable[[Producer], None]:
        def send(producer: Producer) -> None:
            if (endpoint := relay()) is not None:
                endpoint.request_keyframe(rid, index)
        return send

    routers: dict[str, TrackRouter] = {}
    clock = SenderClock()
    for index, wire in enumerate(tracks):
        track = track_from_wire(wire)
        producer = Producer(track, send_nack=send_nack(index), send_keyframe_request=send_keyframe_request(index),
                            on_keyframe=on_keyframe)
        producer.sender_clock = clock
        routers[track.kind] = TrackRouter(producer, core=port.core, batch=port.batch, fanout_cost=port.fanout_cost)
    return Router(routers)


class MediaWorker:
    def __init__(self, ctx: WorkerContext, settings: Settings) -> None:
        self.ctx = ctx
        self.channel = ctx.channel
        self.settings = settings
        self.port = MediaPort(settings.fanout_core, settings.fanout_threads,
                              settings.max_unverified_datagrams, settings.max_dtls_handshakes, settings.ingest)
        self.identity = DtlsIdentity()
        self.plane: MediaPlane | None = None
        self.relay: RelayEndpoint | None = None
        self.publishers: dict[int, PublisherEndpoint] = {}
        self.players: dict[int, PlayerEndpoint] = {}
        self.sources: dict[int, WorkerSource] = {}
        self.relays_out: dict[int, RelayOut] = {}
        self.relays_in: dict[int, Router] = {}
        self.recorders: dict[int, Recorder] = {}
        self.feeds: dict[int, tuple[int, Feed]] = {}  # feed id -> (source id, feed): MSE/WSPlayer feeds
        self.renditions: dict[int, tuple[int, Rendition]] = {}  # rendition id (a source id too) -> (source id, it)
        self.snapshots = Snapshotter(settings.snapshot_timeout)
        self._final: dict[str, dict[int, Any]] = {"pubs": {}, "players": {}}  # counters of endpoints just closed
        self._stats_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self.relay_retransmitted = 0  # packets sent again over the relay in answer to a receiving worker's NACK
        # Relayed sources whose counters are reported as a publisher's (copies of other nodes' streams, which the
        # control process shows as publications: cluster/worker.py)
        self.reported_copies: set[int] = set()

    async def start(self) -> None:
        media_port = await self.port.start(self.ctx.media_host, self.ctx.media_port)
        tcp_port = self.settings.media_tcp_port
        if tcp_port >= 0:
            tcp_port = await self.port.start_tcp(self.ctx.media_host, tcp_port + self.ctx.index if tcp_port else 0)
        self.plane = MediaPlane(self.port, self.identity, self.settings, ())
        self.relay = await RelayEndpoint.bind(on_packet=self._relay_packet, on_keyframe_request=self._relay_keyframe,
                                              on_nack=self._relay_nack)
        self.relay.test_loss = float(os.environ.get("WEBCALL_RELAY_TEST_LOSS") or 0.0)  # tests only
        self.ctx.info.update(media_port=media_port, media_tcp_port=max(tcp_port, 0),
                             fingerprint=list(self.identity.fingerprint),
                             relay=list(self.relay.address))
        ch = self.channel
        for name in ("publish", "play", "close", "relay_out", "relay_in", "relay_stop", "record_start",
                     "record_stop", "keyframe", "sender_report", "feed_start", "feed_stop", "feed_keyframe", "rendition_start", "rendition_stop"):
            ch.on_event(name, getattr(self, f"_on_{name}"))
        ch.on_request("snapshot", self._snapshot)
        if os.environ.get(DEBUG_ENV) == "1":  # leak hunting only (tools/soak.py), never in production
            ch.on_request("debug_objects", lambda top=60: debug_objects(top))
            ch.on_request("debug_heap", lambda trim=False, collect=False: debug_heap(trim, collect))
        loop = asyncio.get_running_loop()
        self._stats_task = loop.create_task(self._stats_loop(), name="worker-stats")
        self._tick_task = loop.create_task(self._relay_tick(), name="worker-relay-tick")

    # --- endpoints ---------------------------------------------------------------------------------

    def _on_publish(self, id: int, name: str, label: str, neg: dict, ice: list[str]) -> None:
        assert self.plane is not None
        negotiation = negotiation_from_wire(neg)
        source = WorkerSource(name, Router({}))
        events = MediaEvents(self, id, source)
        endpoint = self.plane.publisher(negotiation, events, label, ice=(ice[0], ice[1]))
        source.router = endpoint.router
        self.publishers[id] = endpoint
        self.sources[id] = source

    def _on_play(self, id: int, label: str, neg: dict, source: int, ice: list[str],
                 ssrcs: dict[str, list[int | None]]) -> None:
        assert self.plane is not None
        events = MediaEvents(self, id)
        held = self.sources.get(source)
        if held is None or held.router is None:  # the source ended while the command was on its way
            events.on_failed(Failure.INTERNAL_ERROR)
            return
        endpoint = self.plane.player(negotiation_from_wire(neg), held.router, events, label, ice=(ice[0], ice[1]),
                                     ssrcs={mid: (pair[0], pair[1]) for mid, pair in ssrcs.items()})
        self.players[id] = endpoint

    def _on_close(self, id: int) -> None:
        self._keep_final(id)
        endpoint = self.publishers.pop(id, None) or self.players.pop(id, None)
        if endpoint is not None:
            endpoint.close()
        self._drop_source(id)

    def forget(self, id: int) -> None:
        """An endpoint failed on its own: it is closed already; forget it (and what it published)."""
        self._keep_final(id)
        self.publishers.pop(id, None)
        self.players.pop(id, None)
        self._drop_source(id)

    def _keep_final(self, id: int) -> None:
        """The last counters of a closing endpoint go out with the next report: totals must not lose its end."""
        if id in self.publishers:
            self._final["pubs"][id] = self._publisher_counters(self.publishers[id])
        elif id in self.players:
            self._final["players"][id] = self._player_counters(self.players[id])

    def _drop_source(self, id: int) -> None:
        source = self.sources.pop(id, None)
        if source is None:
            return
        source.closed = True
        for fid, (sid, feed) in list(self.feeds.items()):
            if sid == id:
                feed.close()
                del self.feeds[fid]
        for rid_, (sid, rendition) in list(self.renditions.items()):
            if sid == id:
                self._on_rendition_stop(rid_)
        entry = self.renditions.pop(id, None)
        if entry is not None:
            entry[1].close()
        for rid, out in list(self.relays_out.items()):
            if out.source is source:
                out.close()
                del self.relays_out[rid]

    def _on_keyframe(self, source: int) -> None:
        held = self.sources.get(source)
        track = held.router.tracks.get("video") if held is not None and held.router else None
        if track is not None:
            track.producer.request_keyframe(time.monotonic())

    # --- relays between workers ----------------------------------------------------------------------

    def _on_relay_out(self, rid: int, source: int, dest: list) -> None:
        held = self.sources.get(source)
        if held is None or held.router is None or self.relay is None:
            return
        self.relays_out[rid] = RelayOut(held, self.relay.sender((dest[0], dest[1]), rid))

    def _on_relay_in(self, rid: int, name: str, src: list, tracks: list[dict]) -> None:
        assert self.relay is not None
        router = relayed_router(self.port, rid, tracks, lambda: self.relay,
                                on_keyframe=lambda producer, width, height: None)
        source = WorkerSource(name, router)
        source.live = True
        self.relays_in[rid] = router
        self.sources[rid] = source
        self.relay.subscribe(rid, (src[0], src[1]))
        self.channel.notify("relay_ready", rid=rid)  # now the sending worker may start (GOP first)

    async def _relay_tick(self) -> None:
        """Retry the NACKs of relayed sources (a publisher's transport does this for its own producers), and pass
        the publisher's new sender reports on within a tick: a relayed copy that maps its players' SRs through an
        older SR than the origin's would carry that SR's own staleness (aiortc stamps its RTP time up to a frame
        late), and audio and video would disagree by it."""
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            now = time.monotonic()
            try:
                self.sender_reports()
            except Exception:
                log.exception("passing on sender reports failed")
            for router in list(self.relays_in.values()):
                for track in router.tracks.values():
                    if track.producer.missing:
                        try:
                            track.producer.retry_nacks(now)
                        except Exception:
                            log.exception("relay NACK retry failed")

    def _on_relay_stop(self, rid: int) -> None:
        out = self.relays_out.pop(rid, None)
        if out is not None:
            out.close()
        router = self.relays_in.pop(rid, None)
        if router is not None:
            if self.relay is not None:
                self.relay.unsubscribe(rid)
            self._drop_source(rid)
            router.close()

    def sender_reports(self) -> None:
        """The publisher's sender reports, passed on to the workers that hold relayed copies (through the control
        process), so that their players' SRs keep audio and video in sync too. Workers share the host's clock:
        our NTP time at the SR's arrival is theirs."""
        for rid, out in self.relays_out.items():
            for index, track in enumerate(out.tracks):
                p = track.producer
                if p.sr_arrival and p.sr_arrival != out.reported_srs[index]:
                    out.reported_srs[index] = p.sr_arrival
                    self.channel.notify("relay_sender_report", rid=rid, track=index, ntp=p.sr_ntp, rtp=p.sr_rtp,
                                        local=p.sr_local_ntp)

    def _on_sender_report(self, rid: int, track: int, ntp: int, rtp: int, local: int) -> None:
        router = self.relays_in.get(rid)
        tracks = list(router.tracks.values()) if router is not None else []
        if track < len(tracks):
            tracks[track].producer.on_sender_report(ntp, rtp, time.monotonic(), local_ntp=local)

    def _relay_packet(self, rid: int, track: int, packet: bytes) -> None:
        router = self.relays_in.get(rid)
        if router is None:
            return
        tracks = list(router.tracks.values())
        if track < len(tracks):
            tracks[track].producer.receive(packet, time.monotonic())

    def _relay_keyframe(self, rid: int, track: int) -> None:
        out = self.relays_out.get(rid)
        if out is not None and track < len(out.tracks):
            out.tracks[track].producer.request_keyframe(time.monotonic())

    def _relay_nack(self, rid: int, track: int, seqs: list[int]) -> None:
        """The receiving worker lost these: send them again from our ring (what the ring lacks, this worker
        is NACKing from the publisher already, or has given up on)."""
        out = self.relays_out.get(rid)
        if out is None or track >= len(out.tracks):
            return
        producer = out.tracks[track].producer
        for seq in seqs:
            packet = producer.lookup(seq)
            if packet is not None and out.sender.send(track, packet):
                self.relay_retransmitted += 1

    # --- recording and snapshots -------------------------------------------------------------------------

    def _on_record_start(self, id: int, source: int, path: str, options: dict, label: str) -> None:
        held = self.sources.get(source)
        if held is None or held.router is None:
            self.channel.notify("recorder", id=id, state="failed", error="stream ended", received=False,
                                opened=False, stats={})
            return
        tracks = held.router.tracks
        routers = [tracks[kind] for kind in ("video", "audio") if kind in tracks]
        recorder = Recorder(path, routers, RecorderOptions(**options), asyncio.get_running_loop(),
                            on_done=lambda r, id=id: self._recorder_done(id, r), label=label)
        self.recorders[id] = recorder
        recorder.start()

    def _on_record_stop(self, id: int, rename_to: str | None) -> None:
        recorder = self.recorders.get(id)
        if recorder is not None:
            recorder.stop(rename_to)

    def _recorder_done(self, id: int, recorder: Recorder) -> None:
        self.recorders.pop(id, None)
        self.channel.notify("recorder", id=id, state=recorder.state, error=recorder.error,
                            received=recorder.received_media, opened=recorder.opened, stats=recorder.stats())

    # --- shared feeds (transcode/pipeline.py): their chunks go to the control process, once per feed -----------

    def _on_feed_start(self, id: int, source: int, output: str, label: str, profile: list[int] | None = None) -> None:
        held = self.sources.get(source)
        if held is None or held.router is None:
            self.channel.notify("feed_failed", id=id, info="stream ended")
            return
        channel = self.channel

        def emit(chunks: list[tuple[str, bytes]]) -> None:
            if id in self.feeds:
                channel.notify("feed", id=id, chunks=[[kind, base64.b64encode(data).decode("ascii")]
                                                      for kind, data in chunks])

        def failed(info: str) -> None:
            if self.feeds.pop(id, None) is not None:
                channel.notify("feed_failed", id=id, info=info)

        feed = Feed(held.router.tracks, output, asyncio.get_running_loop(), emit, failed, label)
        feed.set_profile((profile[0], profile[1], profile[2]) if profile else None)
        self.feeds[id] = (source, feed)
        feed.start()
        channel.notify("feed_stats", id=id, stats=feed.stats())

    def _on_rendition_start(self, id: int, source: int, codec: str, label: str, profile: list[int] | None = None) -> None:
        held = self.sources.get(source)
        if held is None or held.router is None or "video" not in held.router.tracks:
            self.channel.notify("rendition_failed", id=id, info="stream ended")
            return

        def failed(info: str) -> None:
            if id in self.renditions:
                self._on_rendition_stop(id)
                self.channel.notify("rendition_failed", id=id, info=info)

        port = self.port
        rendition = Rendition(held.router, codec, failed, label, core=port.core, batch=port.batch,
                              fanout_cost=port.fanout_cost,
                              profile=(profile[0], profile[1], profile[2]) if profile else None)
        self.renditions[id] = (source, rendition)
        rsource = WorkerSource(label, rendition.router)
        rsource.live, rsource.width, rsource.height = True, held.width, held.height
        self.sources[id] = rsource  # players name it as their source
        rendition.start()

    def _on_rendition_stop(self, id: int) -> None:
        if id in self.renditions:
            self._drop_source(id)  # closes the rendition too

    def _on_feed_stop(self, id: int) -> None:
        entry = self.feeds.pop(id, None)
        if entry is not None:
            entry[1].close()

    def _on_feed_keyframe(self, id: int) -> None:
        entry = self.feeds.get(id)
        if entry is not None:
            entry[1].request_keyframe()

    async def _snapshot(self, source: int) -> dict[str, Any]:
        held = self.sources.get(source)
        if held is None:
            return {"error": "Stream not found"}
        try:
            png = await self.snapshots.take(held)
        except SnapshotError as exc:
            return {"error": str(exc)}
        return {"png": base64.b64encode(png).decode("ascii")}

    # --- counters ------------------------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            try:
                self.channel.notify("stats", **self.stats())
                for id, (_, feed) in self.feeds.items():
                    self.channel.notify("feed_stats", id=id, stats=feed.stats())
                for id, (_, rendition) in self.renditions.items():
                    p = rendition.producer
                    self.channel.notify("rendition_stats", id=id, stats=rendition.stats(),
                                        video=[p.packets, p.octets, p.frames, p.keyframes, p.nacks_sent,
                                               p.keyframe_requests, p.lost, p.recovered, p.width, p.height])
            except Exception:
                log.exception("stats report failed")

    def stats(self) -> dict[str, Any]:
        """Every endpoint's counters, for the control process's rates, REST answers and /metrics."""
        self.port.take_in()  # the publishers' counters as of `at`, not of the port's last take-in
        pubs = {id: self._publisher_counters(endpoint) for id, endpoint in self.publishers.items()}
        for id in self.reported_copies:
            router = self.relays_in.get(id)
            if router is not None:
                pubs[id] = self._producer_counters({kind: t.producer for kind, t in router.tracks.items()})
        players = {id: self._player_counters(endpoint) for id, endpoint in self.players.items()}
        pubs.update(self._final["pubs"])
        players.update(self._final["players"])
        self._final = {"pubs": {}, "players": {}}
        recording = {id: r.received_media for id, r in self.recorders.items()}
        port = self.port
        relay = asdict(self.relay.stats) if self.relay is not None else {}
        relay["retransmitted"] = self.relay_retransmitted
        return {"at": time.monotonic(), "pubs": pubs, "players": players, "recording": recording,
                "port": [port.dropped, port.errors, fanout_cost_to_wire(port.fanout_cost), dict(port.refusals),
                         [len(port.links), port.tcp_refused], port.ingest_counts.to_list(),
                         port.core_reports],
                "relay": relay}

    @classmethod
    def _publisher_counters(cls, endpoint: PublisherEndpoint) -> dict[str, list[int]]:
        return cls._producer_counters(endpoint.producers)

    @staticmethod
    def _producer_counters(producers: dict[str, Producer]) -> dict[str, list[int]]:
        return {kind: [p.packets, p.octets, p.frames, p.keyframes, p.nacks_sent, p.keyframe_requests, p.lost,
                       p.recovered, p.width, p.height]
                for kind, p in producers.items()}

    @staticmethod
    def _player_counters(endpoint: PlayerEndpoint) -> dict[str, list[int]]:
        return {c.mid: [c.packets, c.octets, c.retransmits, c.retransmit_octets, c.nacks, c.keyframe_requests,
                        c.player_lost]
                for c in endpoint.consumers}

    async def stop(self) -> None:
        for task in (self._stats_task, self._tick_task):
            if task is not None:
                task.cancel()
        for _, feed in self.feeds.values():
            feed.close()
        self.feeds.clear()
        for _, rendition in self.renditions.values():
            rendition.close()
        self.renditions.clear()
        for recorder in list(self.recorders.values()):
            recorder.stop()
        for recorder in list(self.recorders.values()):
            await asyncio.get_running_loop().run_in_executor(None, recorder.join, 10.0)
        self.snapshots.close()
        await self.port.stop()
        if self.relay is not None:
            self.relay.close()


async def setup(ctx: WorkerContext, before_stop: list[Any] | None = None) -> MediaWorker:
    """The `--app` entry: bind the media port and the relay socket, and answer the control process's commands.
    `before_stop`: coroutine functions awaited when the worker is asked to stop, before its media stops (an app
    built on this one, such as cluster/worker.py, closes its own parts there)."""
    settings = Settings(**json.loads(ctx.args.settings or "{}"))
    worker = MediaWorker(ctx, settings)
    await worker.start()
    stops = before_stop if before_stop is not None else []

    async def stop_when_asked() -> None:
        await ctx.stop.wait()
        for stop in stops:
            try:
                await stop()
            except Exception:
                log.exception("worker stop step failed")
        await worker.stop()

    asyncio.get_running_loop().create_task(stop_when_asked(), name="worker-stop")
    return worker
