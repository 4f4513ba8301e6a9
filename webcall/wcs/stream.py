"""WCS publications and playbacks: the status machine of one published or played stream.

Each owns its media endpoint and turns media events ("connected", "first media", "failed", "keyframe
size") and the stream core's events (source ended, picture resized) into WCS status messages for its session.
Terminal statuses (UNPUBLISHED, STOPPED, FAILED) are sent once; after that the stream is closed and forgotten.
A publication is a source of the stream core (streams/registry.py), a playback one of its readers: a playback
can read any source, whichever front end publishes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..hooks.policy import RECORDING_STATUS_EVENT, START_RECORDING
from ..logs import q
from ..media.endpoints import PlayerEndpoint, PublisherEndpoint, new_session_id
from ..media.failures import Failure
from ..media.plane import MediaPlane
from ..media.router import Router
from ..protocol.sdp import Negotiation, build_answer
from ..streams.recording import RecordSettings, Recording, RecordingError, Recordings, login_of
from ..streams.feeds import Feeds
from ..streams.registry import EndReason, Source, StreamRegistry
from ..streams.renditions import Renditions
from ..transcode.pipeline import scaled_size
from . import messages as msg
from . import rest
from .rates import RateMeter, Rates, Reading, player_reading, publisher_reading
from .status import END_INFO, FAILURE_INFO, TERMINAL, Info, StreamStatus

log = logging.getLogger("webcall.wcs")


class StreamSettingsView(Protocol):
    connect_timeout: float
    records: RecordSettings


class Services(Protocol):
    """What a stream needs of the hub (wcs/hub.py)."""

    settings: StreamSettingsView
    plane: MediaPlane
    registry: StreamRegistry
    recordings: Recordings
    feeds: Feeds
    renditions: Renditions

    def retire(self, stream: Publication | Playback) -> None: ...


class Owner(Protocol):
    """The WCS session a stream belongs to (wcs/session.py)."""

    id: str
    app_key: str
    connection: dict | None
    hub: Services

    def send(self, text: str) -> None: ...
    def forget(self, stream: Publication | Playback) -> None: ...
    def status_event(self, obj: dict) -> None: ...
    def hook_event(self, method: str, obj: dict) -> None: ...
    def keep_alive(self, publication: Publication) -> asyncio.Task | None: ...
    def when_allowed(self, method: str, obj: dict, allowed: Callable[[], None],
                     denied: Callable[[str], None]) -> None: ...


class _Stream:
    published: bool
    active_status: StreamStatus  # the status in which media flows (PUBLISHING / PLAYING)

    def __init__(self, session: Owner, request: msg.PublishStream | msg.PlayStream) -> None:
        self.session = session
        self.hub = session.hub
        self.media_session_id = request.media_session_id
        self.name = request.name
        self.request = request
        self.status = StreamStatus.PENDING
        self.create_date = int(time.time() * 1000)
        self.width = self.height = 0
        self.audio_codec: str | None = None
        self.video_codec: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.meter = RateMeter()

    @property
    def closed(self) -> bool:
        return self.status in TERMINAL

    @property
    def label(self) -> str:
        """Who this is, for log lines (the media plane logs it with its transport id)."""
        role = "publish" if self.published else "play"
        return f"session={self.session.id} mediaSessionId={q(self.media_session_id)} stream={q(self.name)} role={role}"

    # --- statistics ---------------------------------------------------------------------------------

    def reading(self) -> Reading | None:
        raise NotImplementedError

    def counters(self) -> dict[tuple[str, str], int]:
        """Cumulative media counters for /metrics: (metric, kind label or "") → value."""
        raise NotImplementedError

    def metrics(self) -> dict[str, int]:
        """The WCS `metrics` object of /stream/find (spec §12), live."""
        raise NotImplementedError

    def _rate_message(self, rates: Rates) -> str | None:
        raise NotImplementedError

    def sample(self, now: float) -> None:
        """Called by the hub once per rate interval: update the rates and tell the client (spec §7)."""
        if self.status != self.active_status:
            return
        reading = self.reading()
        if reading is None:
            return
        rates = self.meter.update(now, reading)
        if rates is not None:
            message = self._rate_message(rates)
            if message is not None:
                self.session.send(message)

    def describe(self) -> dict:
        """This stream as the REST API shows it (spec §12)."""
        return rest.stream_object(
            app_key=self.session.app_key, session_id=self.session.id, media_session_id=self.media_session_id,
            name=self.name, published=self.published, status=str(self.status),
            has_audio=self.audio_codec is not None, has_video=self.video_codec is not None,
            audio_codec=self.audio_codec, video_codec=self.video_codec, record=self.request.record,
            width=self.width, height=self.height, create_date=self.create_date, request=self.request.raw,
            fps=self.meter.latest.fps, metrics=self.metrics(), media_provider=self.request.media_provider,
        )

    def send_status(self, status: StreamStatus, info: str | None = None, extra: dict | None = None) -> None:
        self.status = status
        self.session.status_event({"mediaSessionId": self.media_session_id, "name": self.name,
                                   "published": self.published, "status": str(status), "info": info,
                                   **(extra or {})})
        self.session.send(msg.stream_status(
            media_session_id=self.media_session_id, name=self.name, published=self.published, status=status,
            info=info, has_audio=self.audio_codec is not None, has_video=self.video_codec is not None,
            record=self.request.record, audio_codec=self.audio_codec, video_codec=self.video_codec,
            width=self.width, height=self.height, create_date=self.create_date, extra=extra,
        ))

    def _answer(self, neg: Negotiation, endpoint: PublisherEndpoint | PlayerEndpoint, direction: str,
                ssrcs: dict[str, tuple[int, int | None]] | None = None) -> str:
        transport = endpoint.transport
        for track in neg.tracks:
            if track.kind == "audio":
                self.audio_codec = track.codec.name
            else:
                self.video_codec = track.codec.name
        # The SDK's `transport: "TCP"` (spec §3.2): announce only the ICE-TCP candidates (UDP when there are none).
        tcp_only = str(self.request.raw.get("transport") or "").upper() == "TCP"
        return build_answer(neg, self.hub.plane.local_endpoint(transport, tcp_only),
                            direction=direction, session_id=new_session_id(), ssrcs=ssrcs,
                            stream_label=f"webcall-{self.media_session_id[:8]}")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Publication(_Stream):
    """A published stream: the publisher's endpoint and the players attached to it."""

    published = True
    active_status = StreamStatus.PUBLISHING

    def __init__(self, session: Owner, request: msg.PublishStream) -> None:
        super().__init__(session, request)
        self.endpoint: PublisherEndpoint | None = None
        self.recording: Recording | None = None  # the current or latest recording (spec §14)
        self._keep_alive: asyncio.Task | None = None  # StreamKeepAliveEvent hooks while publishing

    def start(self, neg: Negotiation) -> None:
        self.endpoint = self.hub.plane.publisher(neg, self, self.label)
        answer = self._answer(neg, self.endpoint, "recvonly")
        self.session.send(msg.set_remote_sdp(self.media_session_id, answer))
        log.info("publish offer answered %s video=%s audio=%s", self.label, self.video_codec, self.audio_codec)

    # --- as a source of the stream core (streams/registry.py) and of a recording -------------------

    @property
    def live(self) -> bool:
        return self.status == StreamStatus.PUBLISHING

    @property
    def router(self) -> Router | None:
        return self.endpoint.router if self.endpoint else None

    @property
    def producers(self):
        return self.endpoint.producers if self.endpoint else {}

    @property
    def players(self) -> list[Playback]:
        return [r for r in self.hub.registry.readers(self.name) if isinstance(r, Playback) and not r.closed]

    @property
    def session_id(self) -> str:
        return self.session.id

    @property
    def login(self) -> str:
        return login_of(self.session.connection)

    # --- stream events ------------------------------------------------------------------------------

    def relay_event(self, event_type: str, payload: object) -> int:
        """A stream event to every player of this stream, each under its own mediaSessionId (spec §9).

        Mute events carry `payload.streamName` = this stream's name. Returns how many players got it.
        """
        if event_type in rest.MUTE_EVENT_TYPES:
            payload = {**(payload if isinstance(payload, dict) else {}), "streamName": self.name}
        players = self.players
        for player in players:
            player.session.send(msg.notify_stream_event(player.media_session_id, event_type, payload))
        if self.hub.cluster is not None:  # and to the players of the nodes that pull it (cluster/node.py)
            self.hub.cluster.stream_event(self.name, event_type, payload)
        return len(players)

    # --- statistics ---------------------------------------------------------------------------------

    def reading(self) -> Reading | None:
        return publisher_reading(self.producers.get("video"), self.producers.get("audio"))

    def _rate_message(self, rates: Rates) -> str | None:
        video = self.producers.get("video")
        if video is None:
            return None
        return msg.video_rate("inboundVideoRate", self.media_session_id, rates.video_rate, rates.fps,
                              video.nacks_sent, video.keyframe_requests, video.lost, video.width, video.height)

    def counters(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for kind, p in self.producers.items():
            out["rtp_packets_received", kind] = p.packets
            out["rtp_payload_bytes_received", kind] = p.octets
            out["rtp_packets_recovered", kind] = p.recovered
            out["nacks_sent", kind] = p.nacks_sent
            out["keyframe_requests_sent", kind] = p.keyframe_requests
        return out

    def metrics(self) -> dict[str, int]:
        rates = self.meter.latest
        out: dict[str, int] = {}
        video, audio = self.producers.get("video"), self.producers.get("audio")
        if video is not None:
            out.update(
                VIDEO_WIDTH=video.width, VIDEO_HEIGHT=video.height, VIDEO_RATE=rates.video_rate,
                VIDEO_FPS=rates.fps, VIDEO_NACK=video.nacks_sent, VIDEO_PLI=video.keyframe_requests,
                VIDEO_LOST=video.lost, VIDEO_K_FRAMES=video.keyframes,
                VIDEO_P_FRAMES=max(0, video.frames - video.keyframes), VIDEO_B_FRAMES=0,
            )
        if audio is not None:
            out.update(AUDIO_RATE=rates.audio_rate, AUDIO_LOST=audio.lost)
        return out

    # --- recording (spec §14: streams/recording.py; REST in server/rest_recording.py) -------------

    def start_recording(self, template: str | None = None) -> Recording:
        """Record this stream from now on (a no-op while it is being recorded); raises RecordingError."""
        current = self.recording
        if current is not None and current.stopped_at is None:
            if current.status != "FAILED":
                return current
            current.stop()  # a failed recording is replaced by a new one
        recording = Recording(self, self.hub.settings.records, template)
        recording.start()
        self.recording = recording
        self.hub.recordings.add(recording)
        return recording

    def stop_recording(self) -> str | None:
        """Stop the current recording; the name of the latest recorded file (for `recordName`), if any."""
        return self.recording.stop() if self.recording is not None else None

    def _record_on_publish(self) -> None:
        try:
            self.start_recording()
        except RecordingError as exc:
            log.warning("recording not started %s error=%s", self.label, q(exc))
            self.on_recording_failed(str(exc))

    def on_recording_done(self, record_name: str | None, status: str) -> None:
        """A recording's file is finished (or failed): the backend hears it (RecordingStatusEvent)."""
        self.session.hook_event(RECORDING_STATUS_EVENT, {"mediaSessionId": self.media_session_id, "name": self.name,
                                                         "recordName": record_name, "status": status})

    def on_recording_failed(self, error: str) -> None:
        """The live stream goes on; the publisher's app hears it as a stream event (not in the SDK's list)."""
        if not self.closed:
            self.session.send(msg.notify_stream_event(self.media_session_id, "recordingFailed", {"info": error}))

    # --- media events -------------------------------------------------------------------------

    def on_connected(self) -> None:
        # Connected is not publishing: wait for the first packet, but not forever.
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.hub.settings.connect_timeout, self._no_media)

    def _no_media(self) -> None:
        self._timer = None
        if self.status == StreamStatus.PENDING:
            self.stop(StreamStatus.FAILED, Info.FAILED_BY_RTP_ACTIVITY)

    def on_first_media(self) -> None:
        self._cancel_timer()
        if self.status == StreamStatus.PENDING:
            self.send_status(StreamStatus.PUBLISHING)
            self.meter.update(time.monotonic(), self.reading())  # the first rate comes one interval later
            log.info("publishing %s", self.label)
            self._keep_alive = self.session.keep_alive(self)
            if self.request.record:
                self.session.when_allowed(START_RECORDING, self.describe(), self._record_on_publish,
                                          self.on_recording_failed)

    def on_video_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.hub.registry.video_size(self, width, height)

    def on_failed(self, reason: Failure) -> None:
        if reason == Failure.PEER_CLOSED:  # the client closed DTLS: an unpublish without the message
            self.stop(StreamStatus.UNPUBLISHED, Info.STOPPED_BY_PUBLISHER_STOP)
        else:
            self.stop(StreamStatus.FAILED, FAILURE_INFO[reason])

    # --- teardown ---------------------------------------------------------------------------------

    def stop(self, status: StreamStatus, info: str | None, end: EndReason = EndReason.PUBLISHER_STOPPED,
             notify_self: bool = True) -> None:
        """End the publication: tell its publisher (`status`) and, through the stream core, every reader."""
        if self.closed:
            return
        self._cancel_timer()
        if self._keep_alive is not None and self._keep_alive is not asyncio.current_task():
            self._keep_alive.cancel()
        record_name = self.stop_recording()  # the file is finalized in the background
        if notify_self:
            self.send_status(status, info, extra={"recordName": record_name} if record_name else None)
        else:
            self.status = status
        received = sum(p.packets for p in self.producers.values())
        log.info("publication ended %s status=%s info=%s players=%d packets_received=%d",
                 self.label, status, q(info), len(self.players), received)
        self.hub.registry.unpublish(self, end)
        if self.router is not None:
            self.hub.feeds.source_ended(self.router)
            self.hub.renditions.source_ended(self.router)
        self.session.forget(self)
        if self.endpoint is not None:
            self.endpoint.close()
        self.hub.retire(self)


class Playback(_Stream):
    """A player of a publication."""

    published = False
    active_status = StreamStatus.PLAYING

    def __init__(self, session: Owner, request: msg.PlayStream, publication: Source) -> None:
        super().__init__(session, request)
        self.publication = publication
        self.endpoint: PlayerEndpoint | None = None
        self._by_kind: dict[str, Any] | None = None  # the endpoint's first consumer of each kind
        self.on_end: list[Callable[[], None]] = []  # what the playback holds besides its endpoint (a rendition)
        self.profile: tuple[int, int, int] | None = None  # a size rendition's (width, height, bit/s)

    def start(self, neg: Negotiation, router: Router) -> None:
        """Answer the offer with a player of `router` (the source's router, which the session checked)."""
        self.endpoint = self.hub.plane.player(neg, router, self, self.label)
        answer = self._answer(neg, self.endpoint, "sendonly", self.endpoint.answer_ssrcs)
        self.width, self.height = self.publication.width, self.publication.height
        if self.audio_codec:
            self.session.send(msg.notify_audio_codec(self.media_session_id, self.audio_codec))
        self.session.send(msg.set_remote_sdp(self.media_session_id, answer))
        log.info("play offer answered %s video=%s audio=%s", self.label, self.video_codec, self.audio_codec)

    def on_connected(self) -> None:
        if self.status != StreamStatus.PENDING:
            return
        self.send_status(StreamStatus.PLAYING)
        self.meter.update(time.monotonic(), self.reading())  # the first rate comes one interval later
        log.info("playing %s", self.label)
        if self.video_codec and self.publication.width:
            self.on_video_size(self.publication.width, self.publication.height)

    def on_video_size(self, width: int, height: int) -> None:
        if self.profile is not None:  # the size this player really gets (transcode/pipeline.py scales so)
            width, height = scaled_size(width, height, self.profile[0], self.profile[1])
        self.width, self.height = width, height
        if self.status == StreamStatus.PLAYING:
            self.session.send(msg.notify_video_format(self.media_session_id, width, height))

    def on_failed(self, reason: Failure) -> None:
        # A DTLS close from the client is a stop without the message; anything else is a failure.
        self.stop(StreamStatus.STOPPED if reason == Failure.PEER_CLOSED else StreamStatus.FAILED, FAILURE_INFO[reason])

    def on_source_ended(self, reason: EndReason) -> None:
        self.stop(StreamStatus.STOPPED, END_INFO[reason])

    def stop(self, status: StreamStatus, info: str | None, notify_self: bool = True) -> None:
        if self.closed:
            return
        if notify_self:
            self.send_status(status, info)
        else:
            self.status = status
        self.hub.registry.unread(self.name, self)
        self.session.forget(self)
        if self.endpoint is not None:
            self.endpoint.close()
        for release in self.on_end:
            release()
        self.on_end.clear()
        sent = sum(c.packets for c in self.endpoint.consumers) if self.endpoint else 0
        log.info("playback ended %s status=%s info=%s packets_sent=%d", self.label, status, q(info), sent)
        self.hub.retire(self)

    # --- statistics ---------------------------------------------------------------------------------

    def _consumer(self, kind: str):
        if self.endpoint is None:
            return None
        if self._by_kind is None:  # an endpoint's tracks are fixed when it is made; sampled every second
            self._by_kind = {}
            for consumer in self.endpoint.consumers:
                self._by_kind.setdefault(consumer.kind, consumer)
        return self._by_kind.get(kind)

    def reading(self) -> Reading | None:
        return player_reading(self._consumer("video"), self._consumer("audio"))

    def _fps(self, rates: Rates) -> int:
        return rates.fps if rates.video_packet_rate > 0 else 0

    def _rate_message(self, rates: Rates) -> str | None:
        video = self._consumer("video")
        if video is None:
            return None
        return msg.video_rate("outboundVideoRate", self.media_session_id, rates.video_rate, self._fps(rates),
                              video.nacks, video.keyframe_requests, max(0, video.player_lost),
                              video.producer.width, video.producer.height)

    def counters(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for consumer in self.endpoint.consumers if self.endpoint else ():
            kind = consumer.kind
            out["rtp_packets_sent", kind] = consumer.packets
            out["rtp_payload_bytes_sent", kind] = consumer.octets
            out["retransmissions", kind] = consumer.retransmits
            out["nacks_received", kind] = consumer.nacks
            out["keyframe_requests_received", kind] = consumer.keyframe_requests
        return out

    def metrics(self) -> dict[str, int]:
        rates = self.meter.latest
        out: dict[str, int] = {}
        video, audio = self._consumer("video"), self._consumer("audio")
        if video is not None:
            out.update(
                VIDEO_WIDTH=video.producer.width, VIDEO_HEIGHT=video.producer.height, VIDEO_RATE=rates.video_rate,
                VIDEO_FPS=self._fps(rates), VIDEO_NACK=video.nacks, VIDEO_PLI=video.keyframe_requests,
                VIDEO_LOST=max(0, video.player_lost),
            )
        if audio is not None:
            out.update(AUDIO_RATE=rates.audio_rate, AUDIO_LOST=max(0, audio.player_lost))
        return out
