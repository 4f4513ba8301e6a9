"""Publications and playbacks: the status machine of one published or played stream.

Each owns its media endpoint and turns media events ("connected", "first media", "failed", "keyframe
size") into WCS status messages for its session. Terminal statuses (UNPUBLISHED, STOPPED, FAILED) are sent
once; after that the stream is closed and forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ..media.endpoints import PlayerEndpoint, PublisherEndpoint, new_session_id
from ..protocol import messages as msg
from ..protocol.sdp import Negotiation, build_answer
from ..protocol.status import TERMINAL, Info, StreamStatus

if TYPE_CHECKING:
    from .hub import Hub
    from .session import Session

log = logging.getLogger("webcall.streams")


class _Stream:
    published: bool

    def __init__(self, session: Session, request: msg.PublishStream | msg.PlayStream) -> None:
        self.session = session
        self.hub: Hub = session.hub
        self.media_session_id = request.media_session_id
        self.name = request.name
        self.request = request
        self.status = StreamStatus.PENDING
        self.create_date = int(time.time() * 1000)
        self.width = self.height = 0
        self.audio_codec: str | None = None
        self.video_codec: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self.status in TERMINAL

    def send_status(self, status: StreamStatus, info: str | None = None) -> None:
        self.status = status
        self.session.send(msg.stream_status(
            media_session_id=self.media_session_id, name=self.name, published=self.published, status=status,
            info=info, has_audio=self.audio_codec is not None, has_video=self.video_codec is not None,
            record=self.request.record, audio_codec=self.audio_codec, video_codec=self.video_codec,
            width=self.width, height=self.height, create_date=self.create_date,
        ))

    def _answer(self, neg: Negotiation, endpoint: PublisherEndpoint | PlayerEndpoint, direction: str,
                ssrcs: dict[str, tuple[int, int | None]] | None = None) -> str:
        transport = endpoint.transport
        for track in neg.tracks:
            if track.kind == "audio":
                self.audio_codec = track.codec.name
            else:
                self.video_codec = track.codec.name
        return build_answer(neg, self.hub.local_endpoint(transport.local_ufrag, transport.local_pwd),
                            direction=direction, session_id=new_session_id(), ssrcs=ssrcs,
                            stream_label=f"webcall-{self.media_session_id[:8]}")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Publication(_Stream):
    """A published stream: the publisher's endpoint and the players attached to it."""

    published = True

    def __init__(self, session: Session, request: msg.PublishStream) -> None:
        super().__init__(session, request)
        self.players: set[Playback] = set()
        self.endpoint: PublisherEndpoint | None = None

    def start(self, neg: Negotiation) -> None:
        s = self.hub.settings
        self.endpoint = PublisherEndpoint(self.hub.port, self.hub.identity, neg, s, self,
                                          label=f"publish={self.name}")
        answer = self._answer(neg, self.endpoint, "recvonly")
        self.session.send(msg.set_remote_sdp(self.media_session_id, answer))
        log.info("publish offer answered session=%s stream=%s mediaSessionId=%s video=%s audio=%s",
                 self.session.id, self.name, self.media_session_id, self.video_codec, self.audio_codec)

    @property
    def producers(self):
        return self.endpoint.producers if self.endpoint else {}

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
            log.info("publishing session=%s stream=%s", self.session.id, self.name)

    def on_video_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        for player in list(self.players):
            player.on_video_size(width, height)

    def on_failed(self, info: str) -> None:
        if info == Info.STOPPED_BY_USER:  # the client closed DTLS: an unpublish without the message
            self.stop(StreamStatus.UNPUBLISHED, Info.STOPPED_BY_PUBLISHER_STOP)
        else:
            self.stop(StreamStatus.FAILED, info)

    # --- teardown ---------------------------------------------------------------------------------

    def stop(self, status: StreamStatus, info: str | None, player_info: str = Info.STOPPED_BY_PUBLISHER_STOP,
             notify_self: bool = True) -> None:
        """End the publication: tell its publisher (`status`) and every player (STOPPED)."""
        if self.closed:
            return
        self._cancel_timer()
        if notify_self:
            self.send_status(status, info)
        else:
            self.status = status
        received = sum(p.packets for p in self.producers.values())
        log.info("publication ended session=%s stream=%s status=%s info=%s players=%d packets_received=%d",
                 self.session.id, self.name, status, info, len(self.players), received)
        for player in list(self.players):
            player.stop(StreamStatus.STOPPED, player_info)
        self.hub.release(self)
        self.session.forget(self)
        if self.endpoint is not None:
            self.endpoint.close()


class Playback(_Stream):
    """A player of a publication."""

    published = False

    def __init__(self, session: Session, request: msg.PlayStream, publication: Publication) -> None:
        super().__init__(session, request)
        self.publication = publication
        self.endpoint: PlayerEndpoint | None = None

    def start(self, neg: Negotiation) -> None:
        s = self.hub.settings
        self.endpoint = PlayerEndpoint(self.hub.port, self.hub.identity, neg, s, self.publication.producers,
                                       self, label=f"play={self.name}")
        answer = self._answer(neg, self.endpoint, "sendonly", self.endpoint.answer_ssrcs)
        self.width, self.height = self.publication.width, self.publication.height
        self.publication.players.add(self)
        if self.audio_codec:
            self.session.send(msg.notify_audio_codec(self.media_session_id, self.audio_codec))
        self.session.send(msg.set_remote_sdp(self.media_session_id, answer))
        log.info("play offer answered session=%s stream=%s mediaSessionId=%s",
                 self.session.id, self.name, self.media_session_id)

    def on_connected(self) -> None:
        if self.status != StreamStatus.PENDING:
            return
        self.send_status(StreamStatus.PLAYING)
        log.info("playing session=%s stream=%s", self.session.id, self.name)
        if self.video_codec and self.publication.width:
            self.on_video_size(self.publication.width, self.publication.height)

    def on_video_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        if self.status == StreamStatus.PLAYING:
            self.session.send(msg.notify_video_format(self.media_session_id, width, height))

    def on_failed(self, info: str) -> None:
        # A DTLS close from the client is a stop without the message; anything else is a failure.
        self.stop(StreamStatus.STOPPED if info == Info.STOPPED_BY_USER else StreamStatus.FAILED, info)

    def stop(self, status: StreamStatus, info: str | None, notify_self: bool = True) -> None:
        if self.closed:
            return
        if notify_self:
            self.send_status(status, info)
        else:
            self.status = status
        self.publication.players.discard(self)
        self.session.forget(self)
        if self.endpoint is not None:
            self.endpoint.close()
        sent = sum(c.packets for c in self.endpoint.consumers) if self.endpoint else 0
        log.info("playback ended session=%s stream=%s status=%s info=%s packets_sent=%d",
                 self.session.id, self.name, status, info, sent)
