"""The WCS front end's hub: its live sessions and their streams, and the services they share.

The services are separate objects, each one concept: the stream core (`streams/registry.py`: who publishes
which name, who reads it), the media plane (`media/plane.py`: endpoints on the UDP port), snapshots and
recordings (`streams/`), the rate sampler (`wcs/sampler.py`), the server pings (`wcs/keepalive.py`). The hub
itself is the directory of WCS sessions and streams that the REST API and /metrics query and act on.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..cluster.reasons import ClusterRefused
from ..hooks.client import Hooks, HookSettings
from ..logs import q
from ..media.plane import MediaPlane
from ..streams.feeds import Feeds
from ..streams.recording import RecordSettings, Recordings
from ..streams.renditions import Renditions
from ..limits import SESSIONS_PER_IP, SHUTDOWN, Limits, Refusals
from ..streams.registry import EndReason, Source, StreamRegistry
from ..streams.snapshots import SnapshotError, Snapshotter
from ..transcode.pipeline import start_local_feed
from ..transcode.rendition import start_local_rendition
from . import messages as wcs_messages
from .keepalive import Keepalive
from .rest import ConnectionQuery, StreamQuery
from .sampler import RateSampler
from .status import REFUSAL_INFO, Info, OwnInfo, StreamStatus
from .stream import Playback, Publication


class SessionView(Protocol):
    """A WCS session as the hub lists it (wcs/session.py)."""

    id: str
    app_key: str
    connection: dict | None
    create_date: int
    closed: bool
    streams: dict[str, Publication | Playback]
    remote_ip: str

    def close(self) -> None: ...


class ClusterView(Protocol):
    """The cluster as the WCS front end uses it (cluster/node.py's ClusterNode), when --cluster-redis is set."""

    node_id: str

    async def claim(self, name: str, media_session_id: str) -> None: ...
    async def pull(self, name: str) -> Source | None: ...
    async def available(self, name: str) -> bool: ...
    async def remote_streams(self) -> list[dict]: ...
    async def terminate_remote(self, ids_by_node: dict[str, list[str]]) -> list[str]: ...
    def stream_event(self, name: str, event_type: str, payload: object) -> None: ...

log = logging.getLogger("webcall.wcs")


@dataclass
class StreamSettings:
    """What the WCS front end (and, through it, the stream core and the media plane) needs from the configuration."""

    video_codecs: tuple[str, ...] = ("VP8", "H264")
    connect_timeout: float = 10.0  # ICE + DTLS, and first media after that
    consent_timeout: float = 30.0
    max_bitrate: int = 2_500_000
    ping_interval: float = 5.0
    ping_probes: int = 10
    max_protocol_errors: int = 20
    server_version: str = "webcall-0.1"
    rate_interval: float = 1.0  # inbound/outboundVideoRate and metric samples
    snapshot_timeout: float = 3.0  # how long a snapshot waits for a keyframe
    records: RecordSettings = field(default_factory=RecordSettings)  # recording (spec §14)
    keep_alive_interval: float = 0.0  # StreamKeepAliveEvent hooks (spec §13); 0 = off
    rtp_activity_timeout: float = 5.0  # a publisher silent this long is FAILED (media/endpoints.py)
    bitrate_ceiling: int = 0  # bit/s a publisher may send for bitrate_grace; 0 = none
    bitrate_grace: float = 5.0
    keyframe_interval: float = 2.0  # seconds: a publisher's keyframe older than this is asked for again; 0 = off
    limits: Limits = field(default_factory=Limits)  # signalling limits (webcall/limits.py)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class Hub:
    def __init__(self, settings: StreamSettings, plane: MediaPlane, hooks: Hooks | None = None) -> None:
        self.settings = settings
        self.plane = plane
        self.hooks = hooks or Hooks(HookSettings())  # no backend: everything allowed, no request
        self.registry = StreamRegistry()
        self.sessions: set[SessionView] = set()
        # Other front ends' streams (WHIP/WHEP), listed with the sessions' in REST find_all and /metrics: each a
        # callable returning objects with a stream's REST face (name, media_session_id, published, status,
        # closed, create_date, describe(), counters(), sample(now), stop(status, info)).
        self.listings: list[Callable[[], list]] = []
        self.snapshots = Snapshotter(settings.snapshot_timeout)
        self.recordings = Recordings()
        # Shared feeds for MSE/WSPlayer players: in a worker (WorkerPlane.feed) or in this process.
        self.feeds = Feeds(getattr(plane, "feed", None) or start_local_feed)
        # Renditions in the other WebRTC video codec, for players whose offer lacks the publisher's.
        self.renditions = Renditions(getattr(plane, "rendition", None) or start_local_rendition(getattr(plane, "port", None)))
        self.retired: Counter[tuple[str, str]] = Counter()  # media counters of streams that have ended
        self._retiring: deque[tuple[float, Publication | Playback]] = deque()  # ended, last counters in transit
        self.started_at = time.time()
        self.refusals = Refusals()  # signalling limits' refusals; the media port counts its own
        self.shutting_down = False  # SIGTERM: no new sessions
        self.keepalive = Keepalive(settings.ping_interval, settings.ping_probes)  # the sessions' server pings
        self.sampler = RateSampler(settings.rate_interval, self.streams, refresh=getattr(plane, "take_in", None))
        self.cluster: ClusterView | None = None  # --cluster-redis: names, plays and REST answers span the cluster

    def start(self) -> None:
        self.sampler.start()

    async def close(self) -> None:
        await self.sampler.stop()
        self.keepalive.close()
        self.snapshots.close()
        await self.hooks.close()

    def refuse_session(self, remote_ip: str) -> str | None:
        """Why a new WebSocket session from `remote_ip` is refused (counted), or None to accept it."""
        if self.shutting_down:
            self.refusals[SHUTDOWN] += 1
            return OwnInfo.SERVER_SHUTDOWN
        limit = self.settings.limits.sessions_per_ip
        # Loopback is exempt: behind a reverse proxy on this host every client comes from it (and the bench).
        if limit and not _loopback(remote_ip) and sum(1 for s in self.sessions if s.remote_ip == remote_ip) >= limit:
            self.refusals[SESSIONS_PER_IP] += 1
            log.info("session refused remote=%s limit=%s", remote_ip, SESSIONS_PER_IP)
            return OwnInfo.TOO_MANY_SESSIONS
        return None

    def shut_down(self) -> None:
        """SIGTERM: refuse new sessions; every stream ends with info "Server shutdown" (players STOPPED,
        publishers UNPUBLISHED), then every session closes."""
        self.shutting_down = True
        streams = self.streams()
        # Players first: a publisher's end would otherwise stop them with "Stopped by publisher stop".
        self.terminate([s for s in streams if not s.published], OwnInfo.SERVER_SHUTDOWN)
        for stream in streams:
            if isinstance(stream, Publication) and not stream.closed:
                stream.stop(StreamStatus.UNPUBLISHED, OwnInfo.SERVER_SHUTDOWN, end=EndReason.PUBLISHER_STOPPED)
        for session in list(self.sessions):
            session.close()

    def find_publication(self, name: str) -> Publication | None:
        """The WCS publication live under `name`, if a WCS client publishes it."""
        source = self.registry.find(name)
        return source if isinstance(source, Publication) else None

    # --- queries (REST API, /metrics) -------------------------------------------------------------

    def streams(self) -> list[Publication | Playback]:
        """Every stream of every session, publications and playbacks, in no particular order."""
        return ([stream for session in list(self.sessions) for stream in list(session.streams.values())]
                + [stream for listing in self.listings for stream in listing()])

    def find_streams(self, query: StreamQuery) -> list[Publication | Playback]:
        found = [
            s for s in self.streams()
            if not s.closed and query.matches(name=s.name, media_session_id=s.media_session_id,
                                              published=s.published, status=str(s.status))
        ]
        return sorted(found, key=lambda s: (s.create_date, s.media_session_id))

    def find_session(self, session_id: str) -> SessionView | None:
        return next((s for s in self.sessions if s.id == session_id and not s.closed), None)

    def find_sessions(self, query: ConnectionQuery) -> list[SessionView]:
        found = [
            s for s in list(self.sessions)
            if not s.closed and query.matches(session_id=s.id, app_key=s.app_key,
                                              client_version=(s.connection or {}).get("clientVersion"))
        ]
        return sorted(found, key=lambda s: (s.create_date, s.id))

    # --- actions (REST API) -----------------------------------------------------------------------

    def terminate(self, streams: list[Publication | Playback], info: str = Info.STOPPED_BY_REST_TERMINATE) -> list[str]:
        """Stop these streams: a publisher gets UNPUBLISHED, its players and named players STOPPED, all with
        `info`. Returns the mediaSessionIds of the given streams that this call stopped (a publisher's
        players stop with it, but are listed only if they were given too)."""
        live = [stream for stream in streams if not stream.closed]
        for stream in live:
            if stream.closed:  # a player whose publisher was stopped a moment ago
                continue
            log.info("terminating %s info=%s", stream.label, q(info))
            if isinstance(stream, Publication):
                stream.stop(StreamStatus.UNPUBLISHED, info, end=EndReason.TERMINATED)
            else:
                stream.stop(StreamStatus.STOPPED, info)
        return [stream.media_session_id for stream in live]

    def relay_event(self, name: str, event_type: str, payload: object) -> int | None:
        """A stream event to the players of `name`, as sendStreamEvent does; None if there is no such stream."""
        publication = self.find_publication(name)
        if publication is None:
            return None
        return publication.relay_event(event_type, payload)

    def deliver_stream_event(self, name: str, event_type: str, payload: object) -> int:
        """A stream event of a stream published on another node, to this node's players of it (the cluster)."""
        players = [r for r in self.registry.readers(name) if isinstance(r, Playback) and not r.closed]
        for player in players:
            player.session.send(wcs_messages.notify_stream_event(player.media_session_id, event_type, payload))
        return len(players)

    async def snapshot(self, name: str) -> bytes:
        """PNG of stream `name`'s current picture; SnapshotError("Stream not found", ...) otherwise."""
        source = self.registry.find(name)
        if source is None and self.cluster is not None:  # published on another node, maybe: pulled here (it
            try:  # lingers a few seconds, so a series of snapshots pulls once)
                source = await self.cluster.pull(name)
            except ClusterRefused as exc:
                raise SnapshotError(REFUSAL_INFO[exc.refusal]) from None
        if source is None:
            raise SnapshotError(Info.STREAM_NOT_FOUND)
        remote = getattr(source.router, "snapshot", None)  # a publication in a media worker: taken there
        if remote is not None:
            if not source.live:
                raise SnapshotError("No keyframe yet")
            return await remote(self.settings.snapshot_timeout + 2.0)
        return await self.snapshots.take(source)

    # --- statistics -------------------------------------------------------------------------------

    def retire(self, stream: Publication | Playback) -> None:
        """Keep an ended stream's media counters, so the /metrics totals never go backwards. With media workers
        its last counters are still on their way: it is counted as it is for `retire_after` seconds more."""
        delay = getattr(self.plane, "retire_after", 0.0)
        now = time.monotonic()
        self._settle(now)  # without this, only a /metrics scrape emptied the queue: every ended stream (and its
        # session, hooks client, endpoints) stayed in memory on a server nobody scraped
        if delay:
            self._retiring.append((now + delay, stream))
        else:
            self.retired.update(stream.counters())

    def _settle(self, now: float) -> None:
        """Streams whose last counters are in: into `retired` (their counters only), and let go of."""
        while self._retiring and self._retiring[0][0] <= now:
            self.retired.update(self._retiring.popleft()[1].counters())

    def totals(self) -> Counter[tuple[str, str]]:
        """Media counters since start: ended streams plus live ones."""
        self._settle(time.monotonic())
        totals = Counter(self.retired)
        for _, stream in self._retiring:
            totals.update(stream.counters())
        for stream in self.streams():
            if not stream.closed:
                totals.update(stream.counters())
        return totals

    def find_publication_by_id(self, media_session_id: str) -> Publication | None:
        """The live source with this mediaSessionId that can be recorded: a WCS publication, or one of another
        front end's (a WHIP publication) with the same start_recording/stop_recording/recording."""
        return next((p for p in self.registry.sources()
                     if getattr(p, "media_session_id", None) == media_session_id and hasattr(p, "start_recording")),
                    None)
