"""The control process's media plane: publishers and players placed on worker processes, driven by ids.

`WorkerPlane` offers what `media/plane.py`'s `MediaPlane` offers a front end — `publisher()`, `player()`,
`local_endpoint()` — but the endpoints it returns are views: the media lives in a worker (media_worker.py).
The control process writes every answer itself (it picks the ICE credentials and the players' SSRCs and
sends them along), so signalling never waits for a worker; the worker's media events come back over the
channel and are handed to the same listener methods a local endpoint would call (`on_connected`,
`on_first_media`, `on_video_size`, `on_failed`). Counters arrive every `stats_interval` and fill the views that
rates, REST answers and /metrics read; the workers' relay socket counters land in `relay_stats` (by worker).

A player placed on another worker than its publisher reads a relayed copy: one relay per (stream, worker),
started by that worker's first player and stopped RELAY_LINGER seconds after its last one left.

A worker that dies or stops answering ends only its own endpoints (their listeners hear `Failure.WORKER_LOST`);
the supervisor starts a new one at the same index.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..eventloop import DEFAULT_LOOP
from ..media.consumer import random_ssrc
from ..media.failures import Failure
from ..media.ingest import IngestCounts
from ..media.stats import FanoutCost
from ..media.transport import new_ice_credentials
from ..protocol.sdp import Codec, LocalEndpoint, Negotiation, Track
from ..streams.snapshots import SnapshotError
from .channel import ChannelError
from .media_worker import Settings
from .placement import Placement
from .supervisor import Supervisor, WorkerHandle
from .wire import fanout_cost_add, negotiation_to_wire, track_to_wire

log = logging.getLogger("webcall.workers")

PING_TIMEOUT = 5.0  # a worker whose loop does not answer for this long is lost (a loaded machine stalls for less)
RETIRE_AFTER = 2.0  # seconds until an ended endpoint's last counters have surely arrived (stats every ≤ 0.5 s)
RELAY_LINGER = 3.0  # seconds a relay outlives the last player it served (a quick re-join reuses it)
FILL_THRESHOLD = 300.0  # placement load (players + 4 × publishers) at which `fill` moves on to another worker
APP = "webcall.workers.media_worker:setup"


class Listener(Protocol):
    def on_connected(self) -> None: ...
    def on_failed(self, reason: Failure) -> None: ...


# --- views of what lives in a worker ----------------------------------------------------------------------


class ProducerView:
    """A publisher track's counters, as last reported (media/producer.py's names)."""

    __slots__ = ("kind", "codec", "packets", "octets", "frames", "keyframes", "nacks_sent", "keyframe_requests",
                 "lost", "recovered", "width", "height", "reported_at")

    def __init__(self, kind: str, codec: Codec) -> None:
        self.kind, self.codec = kind, codec
        self.packets = self.octets = self.frames = self.keyframes = self.nacks_sent = 0
        self.keyframe_requests = self.lost = self.recovered = self.width = self.height = 0
        self.reported_at: float | None = None  # the worker's time.monotonic() when it read these counters

    def update(self, values: list[int], at: float | None) -> None:
        self.reported_at = at
        (self.packets, self.octets, self.frames, self.keyframes, self.nacks_sent, self.keyframe_requests,
         self.lost, self.recovered, self.width, self.height) = values


class ConsumerView:
    """A player track's counters, as last reported (media/consumer.py's names)."""

    __slots__ = ("kind", "mid", "ssrc", "rtx_ssrc", "producer", "packets", "octets", "retransmits",
                 "retransmit_octets", "nacks", "keyframe_requests", "player_lost", "reported_at")

    def __init__(self, kind: str, mid: str, ssrcs: tuple[int, int | None], producer: ProducerView) -> None:
        self.kind, self.mid, self.producer = kind, mid, producer
        self.ssrc, self.rtx_ssrc = ssrcs
        self.packets = self.octets = self.retransmits = self.retransmit_octets = 0
        self.nacks = self.keyframe_requests = self.player_lost = 0
        self.reported_at: float | None = None  # the worker's time.monotonic() when it read these counters

    def update(self, values: list[int], at: float | None) -> None:
        self.reported_at = at
        (self.packets, self.octets, self.retransmits, self.retransmit_octets, self.nacks, self.keyframe_requests,
         self.player_lost) = values


@dataclass
class TrackView:
    producer: ProducerView


@dataclass
class RemoteTransport:
    """What an answer needs of a transport: our ICE credentials, and which worker (port, certificate) owns it."""

    local_ufrag: str
    local_pwd: str
    worker: int


class RemoteEndpoint:
    def __init__(self, plane: WorkerPlane, id: int, worker: int, listener: Any, label: str) -> None:
        ufrag, pwd = new_ice_credentials()
        self.plane, self.id, self.worker, self.listener, self.label = plane, id, worker, listener, label
        self.transport = RemoteTransport(ufrag, pwd, worker)
        self.closed = False

    def on_media(self, what: str, **args: Any) -> None:
        if self.closed:
            return
        if what == "connected":
            self.listener.on_connected()
        elif what == "failed":
            self.plane.forget(self)
            self.listener.on_failed(Failure(args["reason"]))
        elif what == "first_media":
            self.listener.on_first_media()
        elif what == "video_size":
            self.listener.on_video_size(args["width"], args["height"])

    def fail(self, reason: Failure) -> None:
        """The worker is gone: end this endpoint as if its connection had failed."""
        if not self.closed:
            self.plane.forget(self)
            self.listener.on_failed(reason)

    def close(self) -> None:
        if not self.closed:
            self.plane.close_endpoint(self)


class RemotePublisher(RemoteEndpoint):
    def __init__(self, plane: WorkerPlane, id: int, worker: int, neg: Negotiation, listener: Any,
                 label: str) -> None:
        super().__init__(plane, id, worker, listener, label)
        self.producers = {t.kind: ProducerView(t.kind, t.codec) for t in neg.tracks}
        self.tracks = neg.tracks
        self.router = RemoteRouter(self)
        self.relays: dict[int, Relay] = {}  # by receiving worker


class RemoteRouter:
    """A worker's publication, as the stream core and the front ends see its router."""

    def __init__(self, publisher: RemotePublisher) -> None:
        self.publisher = publisher
        self.tracks = {kind: TrackView(view) for kind, view in publisher.producers.items()}

    async def snapshot(self, timeout: float) -> bytes:
        p = self.publisher
        try:
            answer = await p.plane.supervisor.request(p.worker, "snapshot", source=p.id, timeout=timeout)
        except (ChannelError, TimeoutError, KeyError) as exc:
            raise SnapshotError("Snapshot failed") from exc
        if "error" in answer:
            raise SnapshotError(answer["error"])
        return base64.b64decode(answer["png"])

    def recorder(self, path: str, options: Any, on_done: Any, label: str) -> RemoteRecorder:
        return self.publisher.plane.start_recorder(self.publisher, path, options, on_done, label)


class RemoteFeed:
    """A shared feed (transcode/pipeline.py) running in the publisher's worker; its chunks come back here."""

    def __init__(self, plane: WorkerPlane, id: int, worker: int, emit: Any, on_failed: Any,
                 transcoding_video: bool) -> None:
        self.plane, self.id, self.worker, self.emit, self.on_failed = plane, id, worker, emit, on_failed
        self.transcoding_video = transcoding_video  # as planned here; the worker's own report replaces it
        self._stats: dict[str, Any] = {}

    def request_keyframe(self) -> None:
        self.plane.notify(self.worker, "feed_keyframe", id=self.id)

    def close(self) -> None:
        if self.plane.feeds.pop(self.id, None) is not None:
            self.plane.notify(self.worker, "feed_stop", id=self.id)

    def stats(self) -> dict[str, Any]:
        return self._stats

    def failed(self, info: str) -> None:
        if self.plane.feeds.pop(self.id, None) is not None:
            self.on_failed(info)


class RenditionSource:
    """A rendition (transcode/rendition.py) made in its publication's worker, as `player()` sees a publisher:
    its players are placed on that worker (no relay), and its audio is the publication's own track."""

    pinned = True

    def __init__(self, plane: WorkerPlane, id: int, publisher: RemotePublisher, codec: Codec) -> None:
        self.plane, self.id, self.worker, self.label = plane, id, publisher.worker, publisher.label
        self.producers = dict(publisher.producers)
        self.producers["video"] = ProducerView("video", codec)
        self.relays: dict[int, Relay] = {}
        self.tracks = {kind: TrackView(view) for kind, view in self.producers.items()}


class RemoteRendition:
    def __init__(self, plane: WorkerPlane, source: RenditionSource, on_failed: Any) -> None:
        self.plane, self.source, self.on_failed = plane, source, on_failed
        self.router = self  # what players attach to: `.publisher` and `.tracks`, like RemoteRouter
        self.publisher = source
        self.tracks = source.tracks
        self.transcoding_video = True
        self._stats: dict[str, Any] = {}

    def stats(self) -> dict[str, Any]:
        return self._stats

    def close(self) -> None:
        if self.plane.renditions.pop(self.source.id, None) is not None:
            self.plane.notify(self.source.worker, "rendition_stop", id=self.source.id)

    def failed(self, info: str) -> None:
        if self.plane.renditions.pop(self.source.id, None) is not None:
            self.on_failed(info)


class RemotePlayer(RemoteEndpoint):
    def __init__(self, plane: WorkerPlane, id: int, worker: int, neg: Negotiation, publisher: RemotePublisher,
                 listener: Any, label: str) -> None:
        super().__init__(plane, id, worker, listener, label)
        self.publisher = publisher
        self.consumers: list[ConsumerView] = []
        for track in neg.tracks:
            ssrcs = (random_ssrc(), random_ssrc() if track.codec.rtx_payload_type is not None else None)
            self.consumers.append(ConsumerView(track.kind, track.mid, ssrcs, publisher.producers[track.kind]))
        self.relay: Relay | None = None

    @property
    def answer_ssrcs(self) -> dict[str, tuple[int, int | None]]:
        return {c.mid: (c.ssrc, c.rtx_ssrc) for c in self.consumers}


class RemoteRecorder:
    """media/recorder.py's Recorder as streams/recording.py uses it, for a recorder running in a worker."""

    def __init__(self, plane: WorkerPlane, id: int, worker: int, on_done: Any) -> None:
        self.plane, self.id, self.worker, self.on_done = plane, id, worker, on_done
        self.state = "recording"
        self.error: str | None = None
        self.received_media = False
        self.opened = False
        self._stats: dict[str, Any] = {}

    def start(self) -> None:
        pass  # asked for by start_recorder already

    def stop(self, rename_to: str | None = None) -> None:
        if self.state == "recording":
            self.state = "finalizing"
            self.plane.notify(self.worker, "record_stop", id=self.id, rename_to=rename_to)

    def stats(self) -> dict[str, Any]:
        return self._stats

    def finished(self, state: str, error: str | None, received: bool, opened: bool, stats: dict[str, Any]) -> None:
        self.state, self.error, self.received_media, self.opened = state, error, received, opened
        self._stats = stats
        if self.on_done is not None:
            self.on_done(self)


@dataclass
class _Tracks:
    """What RemotePublisher needs of a negotiation: its tracks (a pulled copy has no negotiation of its own)."""

    tracks: list[Track]


@dataclass
class Relay:
    id: int
    source: RemotePublisher
    worker: int  # the receiving worker
    players: set[RemotePlayer] = field(default_factory=set)
    linger: asyncio.TimerHandle | None = None


class AggregatePort:
    """The counters /metrics reads of a media port, summed over the workers' latest reports."""

    def __init__(self) -> None:
        self.by_worker: dict[int, list[Any]] = {}

    @property
    def dropped(self) -> int:
        return sum(r[0] for r in self.by_worker.values())

    @property
    def errors(self) -> int:
        return sum(r[1] for r in self.by_worker.values())

    @property
    def refusals(self) -> Counter[str]:
        """The workers' media-plane refusals (their ports' limits apply per worker), summed."""
        total: Counter[str] = Counter()
        for report in self.by_worker.values():
            if len(report) > 3:
                total.update(report[3])
        return total

    @property
    def links(self) -> range:
        """Open ICE-TCP connections (media/tcp.py): only their number crosses the channel."""
        return range(sum(r[4][0] for r in self.by_worker.values() if len(r) > 4))

    @property
    def tcp_refused(self) -> int:
        return sum(r[4][1] for r in self.by_worker.values() if len(r) > 4)

    @property
    def fanout_cost(self) -> FanoutCost:
        total = FanoutCost()
        for report in self.by_worker.values():
            fanout_cost_add(total, report[2])
        return total

    @property
    def core_reports(self) -> int:
        return sum(r[6] for r in self.by_worker.values() if len(r) > 6)

    @property
    def ingest_counts(self) -> IngestCounts:
        total = IngestCounts()
        for report in self.by_worker.values():
            if len(report) > 5:
                total.add_list(report[5])
        return total


# --- the plane ----------------------------------------------------------------------------------------------


class WorkerPlane:
    retire_after = RETIRE_AFTER  # the hub counts an ended stream for this long (its last counters are in transit)

    def __init__(self, count: int, *, mode: str, settings: Settings, media_host: str, media_port: int,
                 announced_ips: list[str], log_level: str = "warning", app: str = APP,
                 event_loop: str = DEFAULT_LOOP) -> None:
        self.settings = settings
        self.announced_ips = announced_ips
        self.supervisor = Supervisor(
            count, media_host=media_host, media_port=media_port, on_worker_lost=self._worker_lost,
            on_worker_started=self._worker_started, app=app, ping_interval=1.0, ping_timeout=PING_TIMEOUT,
            extra_args=["--settings", json.dumps(asdict(settings)), "--log-level", log_level.upper(),
                        "--event-loop", event_loop],
        )
        # spread: every endpoint weighs the same, so one stream's players alternate over the workers.
        self.placement = Placement(range(self.supervisor.count), mode, FILL_THRESHOLD,  # type: ignore[arg-type]
                                   publisher_weight=4.0 if mode == "fill" else 1.0)
        self.endpoints: dict[int, RemoteEndpoint] = {}
        # Endpoints closed in the last few seconds: their last counters are still on their way (see retire).
        self._closed: dict[int, tuple[float, RemoteEndpoint]] = {}
        self.recorders: dict[int, RemoteRecorder] = {}
        self.feeds: dict[int, RemoteFeed] = {}
        self.renditions: dict[int, RemoteRendition] = {}
        self.port = AggregatePort()
        self.relay_stats: dict[int, dict[str, int]] = {}  # worker -> its relay socket's counters (relay.py)
        # Test-only: worker -> the (ip, port) its answers announce instead of announced_ips × its media port
        # (a lossy relay in front of one worker). Empty in production.
        self.announce_override: dict[int, tuple[str, int]] = {}
        self._ids = itertools.count(1)
        self.supervisor.on_event("media", self._on_media)
        self.supervisor.on_event("stats", self._on_stats)
        self.supervisor.on_event("recorder", self._on_recorder)
        self.supervisor.on_event("relay_sender_report", self._on_relay_sender_report)
        self.supervisor.on_event("relay_ready", self._on_relay_ready)
        self.supervisor.on_event("feed", self._on_feed)
        self.supervisor.on_event("feed_failed", self._on_feed_failed)
        self.supervisor.on_event("feed_stats", self._on_feed_stats)
        self.supervisor.on_event("rendition_failed", self._on_rendition_failed)
        self.supervisor.on_event("rendition_stats", self._on_rendition_stats)
        # A cluster node's workers (app cluster/worker.py) report their relays between nodes: to cluster/node.py.
        self.on_cluster: Any = None  # on_cluster(worker, what, **args)
        self.supervisor.on_event("cluster", self._on_cluster)

    async def start(self) -> None:
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()

    @property
    def count(self) -> int:
        return self.supervisor.count

    def media_ports(self) -> list[int]:
        return [h.hello.get("media_port", 0) for _, h in sorted(self.supervisor.workers.items())]

    def media_tcp_ports(self) -> list[int]:
        """Each worker's ICE-TCP port (0: none)."""
        return [h.hello.get("media_tcp_port", 0) for _, h in sorted(self.supervisor.workers.items())]

    def notify(self, worker: int, event: str, **args: Any) -> bool:
        try:
            self.supervisor.notify(worker, event, **args)
            return True
        except (ChannelError, KeyError):
            return False  # the worker is gone; its loss is being handled

    # --- what a front end asks for -----------------------------------------------------------------

    def publisher(self, neg: Negotiation, listener: Any, label: str) -> RemotePublisher:
        worker = self.placement.place_publisher()
        publisher = RemotePublisher(self, next(self._ids), worker, neg, listener, label)
        self.endpoints[publisher.id] = publisher
        t = publisher.transport
        self.notify(worker, "publish", id=publisher.id, name=label, label=label, neg=negotiation_to_wire(neg),
                    ice=[t.local_ufrag, t.local_pwd])
        return publisher

    def player(self, neg: Negotiation, source: RemoteRouter, listener: Any, label: str) -> RemotePlayer:
        publisher = source.publisher
        if getattr(publisher, "pinned", False):  # a rendition: its players sit beside it
            worker = self.placement.place_player_on(publisher.worker)
        else:
            worker = self.placement.place_player(publisher.worker, relayed_to=tuple(publisher.relays))
        player = RemotePlayer(self, next(self._ids), worker, neg, publisher, listener, label)
        self.endpoints[player.id] = player
        source_id = publisher.id
        if worker != publisher.worker:
            player.relay = self._relay(publisher, worker)
            player.relay.players.add(player)
            source_id = player.relay.id
        t = player.transport
        self.notify(worker, "play", id=player.id, label=label, neg=negotiation_to_wire(neg), source=source_id,
                    ice=[t.local_ufrag, t.local_pwd], ssrcs={c.mid: [c.ssrc, c.rtx_ssrc] for c in player.consumers})
        return player

    def quietest_worker(self) -> int:
        """Where a publication would go now (the least-loaded worker), without placing anything."""
        loads = self.placement.loads()
        return min(sorted(loads), key=lambda w: loads[w])

    def pulled_copy(self, name: str, tracks: list[Track], listener: Any, worker: int) -> RemotePublisher:
        """A stream of another node, to be held in `worker` (cluster/worker.py; see `quietest_worker`): it weighs
        as a publication there, and is relayed on to the node's other workers as a publication is. The caller
        tells the worker to pull it (under the returned view's id), and forgets the view when it ends."""
        if worker in self.placement.workers:
            self.placement.set_load(worker, self.placement.load(worker) + self.placement.publisher_weight)
        copy = RemotePublisher(self, next(self._ids), worker, _Tracks(tracks), listener, name)
        self.endpoints[copy.id] = copy
        return copy

    def cluster_relay_port(self, worker: int) -> int:
        """The UDP port of `worker`'s relay socket between nodes (cluster/worker.py); 0: none."""
        handle = self.supervisor.workers.get(worker)
        return int(handle.hello.get("cluster_relay", 0)) if handle is not None and handle.hello else 0

    def _on_cluster(self, worker: int, what: str, **args: Any) -> None:
        if self.on_cluster is not None:
            self.on_cluster(worker, what, **args)

    def local_endpoint(self, transport: RemoteTransport, tcp_only: bool = False) -> LocalEndpoint:
        """As MediaPlane.local_endpoint: the worker's own UDP port, and its own ICE-TCP port if it has one."""
        hello = self.supervisor.workers[transport.worker].hello
        port = hello["media_port"]
        tcp_port = hello.get("media_tcp_port", 0)
        fingerprint = hello["fingerprint"]
        override = self.announce_override.get(transport.worker)
        if override is not None:  # tests: every client of this worker through a relay, UDP only
            candidates, tcp = (override,), ()
        else:
            candidates = tuple((ip, port) for ip in self.announced_ips)
            tcp = tuple((ip, tcp_port) for ip in self.announced_ips) if tcp_port else ()
        if tcp_only and tcp:
            candidates = ()
        return LocalEndpoint(transport.local_ufrag, transport.local_pwd, (fingerprint[0], fingerprint[1]),
                             candidates, tcp)

    def start_recorder(self, publisher: RemotePublisher, path: str, options: Any, on_done: Any,
                       label: str) -> RemoteRecorder:
        recorder = RemoteRecorder(self, next(self._ids), publisher.worker, on_done)
        self.recorders[recorder.id] = recorder
        self.notify(publisher.worker, "record_start", id=recorder.id, source=publisher.id, path=path,
                    options=asdict(options), label=label)
        return recorder

    def feed(self, source: RemoteRouter, output: str, emit: Any, on_failed: Any, label: str,
             profile: tuple[int, int, int] | None = None) -> RemoteFeed:
        """A shared rendition of `source`, made in its publisher's worker; one copy of its chunks comes here."""
        publisher = source.publisher
        video = publisher.producers.get("video")
        feed = RemoteFeed(self, next(self._ids), publisher.worker, emit, on_failed,
                          video is not None and (output != "mse" or video.codec.name.upper() != "H264"
                                                 or profile is not None))
        self.feeds[feed.id] = feed
        self.notify(publisher.worker, "feed_start", id=feed.id, source=publisher.id, output=output, label=label,
                    profile=list(profile) if profile else None)
        return feed

    def rendition(self, source: RemoteRouter, codec: str, on_failed: Any, label: str,
                  profile: tuple[int, int, int] | None = None) -> RemoteRendition:
        """The publication's video in `codec`, made in its publisher's worker (transcode/rendition.py)."""
        from ..transcode.rendition import RENDITION_CODECS

        publisher = source.publisher
        rendition = RemoteRendition(self, RenditionSource(self, next(self._ids), publisher, RENDITION_CODECS[codec]),
                                    on_failed)
        self.renditions[rendition.source.id] = rendition
        self.notify(publisher.worker, "rendition_start", id=rendition.source.id, source=publisher.id, codec=codec,
                    label=label, profile=list(profile) if profile else None)
        return rendition

    # --- lifecycle of endpoints ------------------------------------------------------------------------

    def close_endpoint(self, endpoint: RemoteEndpoint) -> None:
        self.forget(endpoint)
        self.notify(endpoint.worker, "close", id=endpoint.id)

    def forget(self, endpoint: RemoteEndpoint) -> None:
        """The endpoint is closed (by its owner, its worker, or the loss of its worker): release what it held."""
        if endpoint.closed:
            return
        endpoint.closed = True
        self.endpoints.pop(endpoint.id, None)
        self._closed[endpoint.id] = (asyncio.get_running_loop().time(), endpoint)
        if isinstance(endpoint, RemotePublisher):
            self.placement.release_publisher(endpoint.worker)
            for relay in list(endpoint.relays.values()):
                self._stop_relay(relay)
        elif isinstance(endpoint, RemotePlayer):
            self.placement.release_player(endpoint.worker)
            relay = endpoint.relay
            if relay is not None:
                relay.players.discard(endpoint)
                if not relay.players and relay.linger is None and relay.source.relays.get(relay.worker) is relay:
                    relay.linger = asyncio.get_running_loop().call_later(RELAY_LINGER, self._stop_relay, relay)

    # --- relays ----------------------------------------------------------------------------------------------

    def _relay(self, publisher: RemotePublisher, worker: int) -> Relay:
        relay = publisher.relays.get(worker)
        if relay is not None:
            if relay.linger is not None:
                relay.linger.cancel()
                relay.linger = None
            return relay
        relay = Relay(next(self._ids), publisher, worker)
        publisher.relays[worker] = relay
        workers = self.supervisor.workers
        # The receiver first (its channel keeps order, so it subscribes before its players are made); the sender
        # starts when the receiver says it is ready (`_on_relay_ready`), so the GOP it sends first is not lost.
        self.notify(worker, "relay_in", rid=relay.id, name=publisher.label,
                    src=workers[publisher.worker].hello["relay"], tracks=[track_to_wire(t) for t in publisher.tracks])
        log.info("relay started stream=%s from=worker%d to=worker%d relay=%d", publisher.label, publisher.worker,
                 worker, relay.id)
        return relay

    def _stop_relay(self, relay: Relay) -> None:
        if relay.linger is not None:
            relay.linger.cancel()
            relay.linger = None
        if relay.source.relays.get(relay.worker) is relay:
            del relay.source.relays[relay.worker]
        self.notify(relay.worker, "relay_stop", rid=relay.id)
        self.notify(relay.source.worker, "relay_stop", rid=relay.id)
        log.info("relay stopped stream=%s relay=%d", relay.source.label, relay.id)

    # --- from the workers ------------------------------------------------------------------------------------

    def _on_media(self, worker: int, id: int, what: str, **args: Any) -> None:
        endpoint = self.endpoints.get(id)
        if endpoint is not None and endpoint.worker == worker:
            endpoint.on_media(what, **args)

    def _endpoint(self, id: int) -> RemoteEndpoint | None:
        endpoint = self.endpoints.get(id)
        if endpoint is None and id in self._closed:
            endpoint = self._closed[id][1]
        return endpoint

    def _on_stats(self, worker: int, pubs: dict, players: dict, recording: dict, port: list,
                  relay: dict | None = None, at: float | None = None) -> None:
        self.port.by_worker[worker] = port
        if relay is not None:
            self.relay_stats[worker] = relay
        now = asyncio.get_running_loop().time()
        for id in [i for i, (at, _) in self._closed.items() if now - at > 2 * RETIRE_AFTER]:
            del self._closed[id]
        for id, kinds in pubs.items():
            endpoint = self._endpoint(int(id))
            if isinstance(endpoint, RemotePublisher):
                for kind, values in kinds.items():
                    view = endpoint.producers.get(kind)
                    if view is not None:
                        view.update(values, at)
        for id, mids in players.items():
            endpoint = self._endpoint(int(id))
            if isinstance(endpoint, RemotePlayer):
                for consumer in endpoint.consumers:
                    values = mids.get(consumer.mid)
                    if values is not None:
                        consumer.update(values, at)
        for id, received in recording.items():
            recorder = self.recorders.get(int(id))
            if recorder is not None and received:
                recorder.received_media = True

    def _on_relay_ready(self, worker: int, rid: int) -> None:
        """The receiving worker holds the relayed copy: the publisher's worker may send (its GOP first)."""
        for endpoint in list(self.endpoints.values()):
            if isinstance(endpoint, RemotePublisher):
                relay = endpoint.relays.get(worker)
                if relay is not None and relay.id == rid:
                    self.notify(endpoint.worker, "relay_out", rid=rid, source=endpoint.id,
                                dest=self.supervisor.workers[worker].hello["relay"])
                    return

    def _on_relay_sender_report(self, worker: int, rid: int, **report: Any) -> None:
        """A publisher's SR, from its worker to each worker that holds a relayed copy of it."""
        for endpoint in self.endpoints.values():
            if isinstance(endpoint, RemotePublisher) and endpoint.worker == worker:
                for relay in endpoint.relays.values():
                    if relay.id == rid:
                        self.notify(relay.worker, "sender_report", rid=rid, **report)
                        return

    def _on_recorder(self, worker: int, id: int, state: str, error: str | None, received: bool, opened: bool,
                     stats: dict) -> None:
        recorder = self.recorders.pop(id, None)
        if recorder is not None:
            recorder.finished(state, error, received, opened, stats)

    def _on_feed(self, worker: int, id: int, chunks: list) -> None:
        feed = self.feeds.get(id)
        if feed is not None and feed.worker == worker:
            feed.emit([(kind, base64.b64decode(data)) for kind, data in chunks])

    def _on_feed_failed(self, worker: int, id: int, info: str) -> None:
        feed = self.feeds.get(id)
        if feed is not None and feed.worker == worker:
            feed.failed(info)

    def _on_feed_stats(self, worker: int, id: int, stats: dict) -> None:
        feed = self.feeds.get(id)
        if feed is not None and feed.worker == worker:
            feed._stats = stats
            feed.transcoding_video = bool(stats.get("transcoding_video"))

    def _on_rendition_failed(self, worker: int, id: int, info: str) -> None:
        rendition = self.renditions.get(id)
        if rendition is not None and rendition.source.worker == worker:
            rendition.failed(info)

    def _on_rendition_stats(self, worker: int, id: int, stats: dict, video: list[int] | None = None) -> None:
        rendition = self.renditions.get(id)
        if rendition is not None and rendition.source.worker == worker:
            rendition._stats = stats
            if video is not None:
                rendition.source.producers["video"].update(video)

    # --- faults ----------------------------------------------------------------------------------------------

    def _worker_lost(self, index: int, reason: str) -> None:
        log.warning("worker lost worker=%d reason=%s endpoints=%d", index, reason,
                    sum(1 for e in self.endpoints.values() if e.worker == index))
        try:
            self.placement.remove_worker(index)
        except (ValueError, KeyError):
            pass  # the last worker: it keeps taking placements (its replacement is on its way)
        self.port.by_worker.pop(index, None)
        self.relay_stats.pop(index, None)
        for relay in [r for e in self.endpoints.values() if isinstance(e, RemotePublisher)
                      for r in e.relays.values() if r.worker == index]:
            self._stop_relay(relay)  # its players are ending below
        for endpoint in [e for e in self.endpoints.values() if e.worker == index]:
            endpoint.fail(Failure.WORKER_LOST)
        for feed in [f for f in self.feeds.values() if f.worker == index]:
            feed.failed("media worker lost")
        for rendition in [r for r in self.renditions.values() if r.source.worker == index]:
            rendition.failed("media worker lost")
        for id, recorder in [(i, r) for i, r in self.recorders.items() if r.worker == index]:
            del self.recorders[id]
            recorder.finished("failed", "media worker lost", recorder.received_media, recorder.opened, {})

    def _worker_started(self, index: int, handle: WorkerHandle) -> None:
        if index not in self.placement.workers:
            self.placement.add_worker(index)
        log.info("worker ready worker=%d pid=%d media_port=%s", index, handle.pid, handle.hello.get("media_port"))
