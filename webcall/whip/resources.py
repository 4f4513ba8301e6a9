"""WHIP publications and WHEP playbacks: one media endpoint each, as a source or a reader of the stream core.

No status messages to send (HTTP has nothing after the answer): a WHIP publication is live from its first media
packet and ends when its publisher DELETEs it or its media fails; a WHEP playback ends likewise, or with its
source (the player sees DTLS close).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Protocol

from ..logs import q
from ..media.endpoints import new_session_id
from ..media.failures import Failure
from ..protocol.sdp import Negotiation, build_answer
from ..streams.recording import RecordSettings, Recording, RecordingError, Recordings
from ..streams.registry import EndReason, Source, StreamRegistry
from ..wcs.rates import RateMeter, Reading, player_reading, publisher_reading

log = logging.getLogger("webcall.whip")


class Plane(Protocol):
    """MediaPlane (media/plane.py) or WorkerPlane (workers/control.py)."""

    def publisher(self, neg: Negotiation, listener: Any, label: str) -> Any: ...
    def player(self, neg: Negotiation, router: Any, listener: Any, label: str) -> Any: ...
    def local_endpoint(self, transport: Any) -> Any: ...


class Settings(Protocol):
    video_codecs: tuple[str, ...]
    connect_timeout: float
    records: RecordSettings


class Owner(Protocol):
    """The front end (http.py) that keeps the resources by id."""

    registry: StreamRegistry
    plane: Plane
    settings: Settings
    recordings: Recordings | None

    def forget(self, resource: Resource) -> None: ...


class Resource:
    published: bool
    protocol: str

    def __init__(self, owner: Owner, name: str, neg: Negotiation) -> None:
        self.owner = owner
        self.registry = owner.registry
        self.name = name
        self.neg = neg
        self.id = secrets.token_urlsafe(12)
        self.create_date = int(time.time() * 1000)
        self.status = "PENDING"  # PENDING → PUBLISHING/PLAYING → STOPPED/FAILED
        self.width = self.height = 0
        self.endpoint: Any = None
        self.meter = RateMeter()  # sampled by the hub like every stream (wcs/sampler.py): REST metrics, fps

    @property
    def closed(self) -> bool:
        return self.status in ("STOPPED", "FAILED")

    @property
    def label(self) -> str:
        role = "publish" if self.published else "play"
        return f"{self.protocol}={self.id} stream={q(self.name)} role={role}"

    def codecs(self) -> dict[str, str]:
        return {t.kind: t.codec.name for t in self.neg.tracks}

    # --- as the REST API and /metrics list it (through the hub's `listings`) ---------------------------

    @property
    def media_session_id(self) -> str:
        return self.id

    def describe(self) -> dict[str, Any]:
        """The stream as /rest-api/stream/find shows it: the WCS stream object's main keys."""
        codecs = self.codecs()
        obj: dict[str, Any] = {
            "appKey": self.protocol, "sessionId": self.id, "mediaSessionId": self.id, "name": self.name,
            "published": self.published, "hasVideo": "video" in codecs, "hasAudio": "audio" in codecs,
            "status": self.status, "videoCodec": codecs.get("video"), "record": False, "width": self.width,
            "height": self.height, "createDate": self.create_date, "transport": self.transport_kind(),
            "mediaType": "publish" if self.published else "play", "mediaProvider": self.protocol.upper(),
            "fps": self.meter.latest.fps, "metrics": self.metrics(),
        }
        if "audio" in codecs:
            obj["audioCodec"] = codecs["audio"]
        return obj

    def transport_kind(self) -> str:
        """UDP, or TCP for a client on ICE-TCP (media/tcp.py); a worker's endpoint is reported as UDP."""
        transport = getattr(self.endpoint, "transport", None)
        return "TCP" if getattr(transport, "link", None) is not None else "UDP"

    def sample(self, now: float) -> None:
        """Rates for REST and /metrics (no rate messages: HTTP has no channel after the answer)."""
        if self.live:
            self.meter.update(now, self.reading())

    def reading(self) -> Reading:
        raise NotImplementedError

    def metrics(self) -> dict[str, int]:
        raise NotImplementedError

    def counters(self) -> dict[tuple[str, str], int]:
        raise NotImplementedError

    def answer(self, direction: str, ssrcs: dict[str, tuple[int, int | None]] | None = None) -> str:
        return build_answer(self.neg, self.owner.plane.local_endpoint(self.endpoint.transport), direction=direction,
                            session_id=new_session_id(), ssrcs=ssrcs, stream_label=f"webcall-{self.id[:8]}")

    def _end(self, status: str, why: str) -> bool:
        if self.closed:
            return False
        self.status = status
        log.info("%s ended %s status=%s why=%s", self.protocol, self.label, status, why)
        self.owner.forget(self)
        return True


class WhipPublication(Resource):
    """A WHIP publisher: a Source of the stream core, so WCS and WHEP clients play it alike."""

    published = True
    protocol = "whip"

    def __init__(self, owner: Owner, name: str, neg: Negotiation) -> None:
        super().__init__(owner, name, neg)
        self._timer: asyncio.TimerHandle | None = None
        self.recording: Recording | None = None  # started by REST startRecording (server/rest_recording.py)
        self.session_id = self.id  # for a recording's {sessionId}
        self.login = ""  # no login over WHIP: {login} is empty
        codecs = self.codecs()
        self.audio_codec, self.video_codec = codecs.get("audio"), codecs.get("video")

    def start(self) -> str:
        """The media endpoint, and the SDP answer that announces it."""
        self.endpoint = self.owner.plane.publisher(self.neg, self, self.label)
        return self.answer("recvonly")

    # --- as a Source (streams/registry.py) ----------------------------------------------------------

    @property
    def live(self) -> bool:
        return self.status == "PUBLISHING"

    @property
    def router(self) -> Any:
        return self.endpoint.router if self.endpoint is not None else None

    @property
    def producers(self) -> dict:
        return self.endpoint.producers if self.endpoint is not None else {}

    @property
    def players(self) -> list[Any]:
        return [r for r in self.registry.readers(self.name) if not getattr(r, "closed", False)]

    def counters(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for kind, p in self.producers.items():
            out["rtp_packets_received", kind] = p.packets
            out["rtp_payload_bytes_received", kind] = p.octets
            out["rtp_packets_recovered", kind] = p.recovered
            out["nacks_sent", kind] = p.nacks_sent
            out["keyframe_requests_sent", kind] = p.keyframe_requests
        return out

    def reading(self) -> Reading:
        return publisher_reading(self.producers.get("video"), self.producers.get("audio"))

    def metrics(self) -> dict[str, int]:
        """The WCS `metrics` object (spec §12), as a WCS publication reports it."""
        rates = self.meter.latest
        out: dict[str, int] = {}
        video, audio = self.producers.get("video"), self.producers.get("audio")
        if video is not None:
            out.update(VIDEO_WIDTH=video.width, VIDEO_HEIGHT=video.height, VIDEO_RATE=rates.video_rate,
                       VIDEO_FPS=rates.fps, VIDEO_NACK=video.nacks_sent, VIDEO_PLI=video.keyframe_requests,
                       VIDEO_LOST=video.lost, VIDEO_K_FRAMES=video.keyframes,
                       VIDEO_P_FRAMES=max(0, video.frames - video.keyframes), VIDEO_B_FRAMES=0)
        if audio is not None:
            out.update(AUDIO_RATE=rates.audio_rate, AUDIO_LOST=audio.lost)
        return out

    # --- recording (REST startRecording/stopRecording, streams/recording.py) -------------------------

    def start_recording(self, template: str | None = None) -> Recording:
        """Record this stream from now on (a no-op while it is being recorded); raises RecordingError."""
        current = self.recording
        if current is not None and current.stopped_at is None:
            if current.status != "FAILED":
                return current
            current.stop()
        if self.owner.recordings is None:
            raise RecordingError("recording is not available")
        recording = Recording(self, self.owner.settings.records, template)
        recording.start()
        self.recording = recording
        self.owner.recordings.add(recording)
        return recording

    def stop_recording(self) -> str | None:
        return self.recording.stop() if self.recording is not None else None

    def on_recording_failed(self, error: str) -> None:
        log.warning("recording failed %s error=%s", self.label, q(error))

    def on_recording_done(self, record_name: str | None, status: str) -> None:
        log.info("recording done %s file=%s status=%s", self.label, record_name, status)

    # --- media events -------------------------------------------------------------------------------

    def on_connected(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.owner.settings.connect_timeout, self._no_media)

    def _no_media(self) -> None:
        self._timer = None
        if self.status == "PENDING":
            self.stop("FAILED", "no media")

    def on_first_media(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.status == "PENDING":
            self.status = "PUBLISHING"
            log.info("publishing %s codecs=%s", self.label, self.codecs())

    def on_video_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.registry.video_size(self, width, height)

    def on_failed(self, reason: Failure) -> None:
        self.stop("STOPPED" if reason == Failure.PEER_CLOSED else "FAILED", str(reason))

    def stop(self, status: str = "STOPPED", why: str = "deleted",
             end: EndReason = EndReason.PUBLISHER_STOPPED) -> None:
        if not self._end(status, why):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.stop_recording()  # the file is finalized in the background
        self.registry.unpublish(self, end)
        if self.endpoint is not None:
            self.endpoint.close()


class WhepPlayback(Resource):
    """A WHEP player: a reader of any source of the stream core."""

    published = False
    protocol = "whep"

    def __init__(self, owner: Owner, name: str, neg: Negotiation, source: Source) -> None:
        super().__init__(owner, name, neg)
        self.source = source

    def start(self, router: Any) -> str:
        self.endpoint = self.owner.plane.player(self.neg, router, self, self.label)
        self.width, self.height = self.source.width, self.source.height
        return self.answer("sendonly", self.endpoint.answer_ssrcs)

    @property
    def live(self) -> bool:
        return self.status == "PLAYING"

    def counters(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for consumer in self.endpoint.consumers if self.endpoint is not None else ():
            out["rtp_packets_sent", consumer.kind] = consumer.packets
            out["rtp_payload_bytes_sent", consumer.kind] = consumer.octets
            out["rtp_packets_retransmitted", consumer.kind] = consumer.retransmits
        return out

    def _consumer(self, kind: str) -> Any:
        return next((c for c in (self.endpoint.consumers if self.endpoint is not None else ()) if c.kind == kind),
                    None)

    def reading(self) -> Reading:
        return player_reading(self._consumer("video"), self._consumer("audio"))

    def metrics(self) -> dict[str, int]:
        rates = self.meter.latest
        out: dict[str, int] = {}
        video, audio = self._consumer("video"), self._consumer("audio")
        if video is not None:
            out.update(VIDEO_WIDTH=self.width, VIDEO_HEIGHT=self.height, VIDEO_RATE=rates.video_rate,
                       VIDEO_FPS=rates.fps, VIDEO_NACK=video.nacks, VIDEO_PLI=video.keyframe_requests,
                       VIDEO_LOST=video.player_lost)
        if audio is not None:
            out.update(AUDIO_RATE=rates.audio_rate, AUDIO_LOST=audio.player_lost)
        return out

    def on_connected(self) -> None:
        if self.status == "PENDING":
            self.status = "PLAYING"
            log.info("playing %s", self.label)

    def on_first_media(self) -> None:
        pass

    def on_video_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height

    def on_failed(self, reason: Failure) -> None:
        self.stop("STOPPED" if reason == Failure.PEER_CLOSED else "FAILED", str(reason))

    def on_source_ended(self, reason: EndReason) -> None:
        self.stop("STOPPED", f"source ended: {reason}")

    def stop(self, status: str = "STOPPED", why: str = "deleted") -> None:
        if not self._end(status, why):
            return
        self.registry.unread(self.name, self)
        if self.endpoint is not None:
            self.endpoint.close()
