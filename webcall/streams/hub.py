"""The hub: the stream registry by name, the live sessions, and the media plane they share.

`Hub` is the one object the front end creates; sessions reach the registry and the media port through
it. The registry is the only place that knows who publishes what (MediaMTX's path manager is the model).
The front end's REST API and /metrics read and act through the hub's query methods, never the media
plane directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..logs import q
from ..media.dtls import DtlsIdentity
from ..media.port import MediaPort
from ..protocol.rest import ConnectionQuery, StreamQuery
from ..protocol.sdp import LocalEndpoint
from ..protocol.status import Info, StreamStatus
from .recording import RecordSettings
from .snapshots import SnapshotError, Snapshotter

if TYPE_CHECKING:
    from .recording import Recording
    from .session import Session
    from .stream import Playback, Publication

log = logging.getLogger("webcall.streams")


@dataclass
class StreamSettings:
    """What the streams and media layers need from the configuration."""

    candidates: tuple[tuple[str, int], ...]  # announced (ip, port), filled in once the port is bound
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


SAMPLE_SLOTS = 10  # the sampler wakes this many times per rate interval


class Hub:
    def __init__(self, settings: StreamSettings, port: MediaPort, identity: DtlsIdentity) -> None:
        self.settings = settings
        self.port = port
        self.identity = identity
        self.publications: dict[str, Publication] = {}
        self.sessions: set[Session] = set()
        self.snapshots = Snapshotter(settings.snapshot_timeout)
        self.retired: Counter[tuple[str, str]] = Counter()  # media counters of streams that have ended
        self.started_at = time.time()
        self._recordings: set[Recording] = set()  # being written or finalized
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the once-per-`rate_interval` sampler (rates, inbound/outboundVideoRate)."""
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_loop(), name="rate-sampler")

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            try:
                await self._sampler
            except asyncio.CancelledError:
                pass
            self._sampler = None
        self.snapshots.close()

    # --- registry ---------------------------------------------------------------------------------

    def claim(self, publication: Publication) -> bool:
        """Reserve a stream name for a publisher; False if someone already holds it."""
        if publication.name in self.publications:
            return False
        self.publications[publication.name] = publication
        return True

    def find(self, name: str) -> Publication | None:
        return self.publications.get(name)

    def release(self, publication: Publication) -> None:
        if self.publications.get(publication.name) is publication:
            del self.publications[publication.name]

    # --- queries (REST API, /metrics) -------------------------------------------------------------

    def streams(self) -> list[Publication | Playback]:
        """Every stream of every session, publications and playbacks, in no particular order."""
        return [stream for session in list(self.sessions) for stream in list(session.streams.values())]

    def find_streams(self, query: StreamQuery) -> list[Publication | Playback]:
        found = [
            s for s in self.streams()
            if not s.closed and query.matches(name=s.name, media_session_id=s.media_session_id,
                                              published=s.published, status=str(s.status))
        ]
        return sorted(found, key=lambda s: (s.create_date, s.media_session_id))

    def find_session(self, session_id: str) -> Session | None:
        return next((s for s in self.sessions if s.id == session_id and not s.closed), None)

    def find_sessions(self, query: ConnectionQuery) -> list[Session]:
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
        from .stream import Publication

        live = [stream for stream in streams if not stream.closed]
        for stream in live:
            if stream.closed:  # a player whose publisher was stopped a moment ago
                continue
            log.info("terminating %s info=%s", stream.label, q(info))
            if isinstance(stream, Publication):
                stream.stop(StreamStatus.UNPUBLISHED, info, player_info=info)
            else:
                stream.stop(StreamStatus.STOPPED, info)
        return [stream.media_session_id for stream in live]

    def relay_event(self, name: str, event_type: str, payload: object) -> int | None:
        """A stream event to the players of `name`, as sendStreamEvent does; None if there is no such stream."""
        publication = self.find(name)
        if publication is None or publication.closed:
            return None
        return publication.relay_event(event_type, payload)

    async def snapshot(self, name: str) -> bytes:
        """PNG of stream `name`'s current picture; SnapshotError("Stream not found", ...) otherwise."""
        publication = self.find(name)
        if publication is None or publication.closed:
            raise SnapshotError(Info.STREAM_NOT_FOUND)
        return await self.snapshots.take(publication)

    # --- statistics -------------------------------------------------------------------------------

    async def _sample_loop(self) -> None:
        interval = self.settings.rate_interval
        slot = 0
        slices: list[list[Publication | Playback]] = []
        while True:
            await asyncio.sleep(interval / SAMPLE_SLOTS)
            if slot == 0:
                slices = self.sample_slices()  # streams created since are sampled from the next interval on
            self.sample(time.monotonic(), slices[slot])
            slot = (slot + 1) % SAMPLE_SLOTS

    def sample_slices(self) -> list[list[Publication | Playback]]:
        """Every stream in one of SAMPLE_SLOTS slices, by its id: the sampler takes one slice per wake-up, so each
        stream gets one sample (and one rate message) per interval, and a thousand players' messages are not
        built in one loop iteration — that would hold up forwarding for milliseconds once a second."""
        slices: list[list[Publication | Playback]] = [[] for _ in range(SAMPLE_SLOTS)]
        for stream in self.streams():
            slices[zlib.crc32(stream.media_session_id.encode()) % SAMPLE_SLOTS].append(stream)
        return slices

    def sample(self, now: float, streams: list[Publication | Playback] | None = None) -> None:
        """Sample these streams (default: all of them)."""
        for stream in self.streams() if streams is None else streams:
            try:
                stream.sample(now)
            except Exception:  # one stream's bug must not stop everyone's rates
                log.exception("rate sampling failed %s", stream.label)

    def retire(self, counters: dict[tuple[str, str], int]) -> None:
        """Keep an ended stream's media counters, so the /metrics totals never go backwards."""
        self.retired.update(counters)

    def totals(self) -> Counter[tuple[str, str]]:
        """Media counters since start: ended streams plus live ones."""
        totals = Counter(self.retired)
        for stream in self.streams():
            if not stream.closed:
                totals.update(stream.counters())
        return totals

    # --- recording (spec §14; streams/recording.py, server/rest_recording.py) ----------------------

    def add_recording(self, recording: Recording) -> None:
        self._recordings.add(recording)
        recording.done.add_done_callback(lambda _: self._prune_recordings())

    def _prune_recordings(self) -> None:
        # A failed recording stays listed (status FAILED, with the error) while its stream is live.
        self._recordings = {r for r in self._recordings
                            if not r.done.done() or (r.status == "FAILED" and not r.publication.closed)}

    def recordings(self) -> list[Recording]:
        """Recordings being written or finalized, and failed ones of live streams; oldest first."""
        self._prune_recordings()
        return sorted(self._recordings, key=lambda r: r.started_at)

    def find_publication(self, media_session_id: str) -> Publication | None:
        return next((p for p in list(self.publications.values())
                     if p.media_session_id == media_session_id and not p.closed), None)

    async def finish_recordings(self, timeout: float = 10.0) -> None:
        """Stop every recording and wait until its file is finalized (server shutdown)."""
        for recording in list(self._recordings):
            recording.stop()
        pending = [r.done for r in self._recordings if not r.done.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    # --- answers ----------------------------------------------------------------------------------

    def local_endpoint(self, ufrag: str, pwd: str) -> LocalEndpoint:
        return LocalEndpoint(ufrag, pwd, self.identity.fingerprint, self.settings.candidates)
