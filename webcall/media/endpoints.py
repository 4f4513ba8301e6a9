"""Publisher and player endpoints: a transport plus its producers or consumers, and their RTCP.

A publisher endpoint also watches its input on the transport's tick (no cost per packet): no RTP for
`rtp_activity_timeout` once media had started fails it (`Failure.RTP_ACTIVITY`), and a measured bitrate over
`bitrate_ceiling` for `bitrate_grace` seconds fails it (`Failure.BITRATE_EXCEEDED`). With `keyframe_interval`
it asks each video producer for a keyframe once its latest is that old.

These are what the streams layer holds. Events go up through a small listener interface; the media
plane never sees WCS messages.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import struct
import time
from typing import Protocol

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    pack_remb_fci,
)

from ..protocol.sdp import Negotiation
from ..limits import PUBLISHER_BITRATE
from .consumer import Consumer, random_ssrc
from .dtls import DtlsIdentity
from .failures import Failure
from .port import MAX_LATE, MediaPort
from .producer import KEYFRAME_MIN_INTERVAL, NACK_RETRY_INTERVAL, Producer, SenderClock, ntp_now
from .reports import rtcp_interval_range
from .router import Router, TrackRouter
from .transport import WebRtcTransport

log = logging.getLogger("webcall.media")

RTCP_INTERVALS = rtcp_interval_range(MAX_LATE)  # the port ticks a report up to that late (port.py, "Time")


def rtcp_interval() -> float:
    """The time to our next report (reports.py: `rtcp_interval_range`)."""
    return random.uniform(*RTCP_INTERVALS)


_SSRC = struct.Struct("!I")
INPUT_WATCH_INTERVAL = 1.0  # s: how often a publisher's input is looked at (silence, bitrate over the ceiling)
_SR_HEADER = struct.pack("!BBH", 0x80, 200, 6)  # V=2, no report blocks, SR, length 6 words − 1


class EndpointEvents(Protocol):
    def on_connected(self) -> None: ...
    def on_failed(self, reason: Failure) -> None: ...


class PublisherEvents(EndpointEvents, Protocol):
    def on_first_media(self) -> None: ...
    def on_video_size(self, width: int, height: int) -> None: ...


class MediaSettings(Protocol):
    connect_timeout: float
    consent_timeout: float
    max_bitrate: int
    rtp_activity_timeout: float
    bitrate_ceiling: int  # bit/s; 0 = none
    bitrate_grace: float
    keyframe_interval: float  # seconds; 0 = keyframes only on demand


class _Endpoint:
    def __init__(self, port: MediaPort, identity: DtlsIdentity, neg: Negotiation, settings: MediaSettings,
                 label: str, ice: tuple[str, str] | None) -> None:
        self.rtcp_ssrc = random_ssrc()
        self.settings = settings
        self.transport = WebRtcTransport(
            port, identity, remote_ufrag=neg.ice_ufrag, remote_fingerprints=neg.fingerprints, listener=self,
            connect_timeout=settings.connect_timeout, consent_timeout=settings.consent_timeout,
            now=time.monotonic(), label=label, ice=ice,
        )
        self.port = port
        self._next_rtcp = 0.0
        self.closed = False

    def _parse_rtcp(self, data: bytes) -> list:
        try:
            return RtcpPacket.parse(data)
        except ValueError:
            return []


class PublisherEndpoint(_Endpoint):
    def __init__(self, port: MediaPort, identity: DtlsIdentity, neg: Negotiation, settings: MediaSettings,
                 events: PublisherEvents, label: str = "", ice: tuple[str, str] | None = None) -> None:
        super().__init__(port, identity, neg, settings, label, ice)
        self.events = events
        self.producers: dict[str, Producer] = {}
        tracks: dict[str, TrackRouter] = {}
        self._by_ssrc: dict[int, Producer] = {}
        self._rtx_by_ssrc: dict[int, Producer] = {}
        self._by_pt: dict[int, Producer] = {}
        self._rtx_by_pt: dict[int, Producer] = {}
        clock = SenderClock()  # one for the publisher: its SRs map audio and video to one NTP clock
        for track in neg.tracks:
            producer = Producer(track, send_nack=self._send_nack, send_keyframe_request=self._send_pli,
                                on_keyframe=self._on_keyframe)
            producer.sender_clock = clock
            tracks[track.kind] = TrackRouter(producer, core=port.core, batch=port.batch,
                                             fanout_cost=port.fanout_cost)
            self.producers[track.kind] = producer
            self._by_pt[producer.payload_type] = producer
            if producer.rtx_payload_type is not None:
                self._rtx_by_pt[producer.rtx_payload_type] = producer
            if producer.ssrc is not None:
                self._by_ssrc[producer.ssrc] = producer
            if producer.rtx_ssrc is not None:
                self._rtx_by_ssrc[producer.rtx_ssrc] = producer
        self.router = Router(tracks)  # who reads this publication: players, recorders (media/router.py)
        self.media_started = False
        # Input watch, read from the transport's counters on its tick (see the module docstring).
        self._seen_packets = 0
        self._last_rtp = 0.0
        self._window_start = 0.0
        self._window_bytes = 0
        self._over_since: float | None = None

    # --- transport events -------------------------------------------------------------------------

    def on_transport_connected(self, now: float) -> None:
        self._last_rtp = self._window_start = now
        ingest = self.transport.start_ingest()  # forwarding in a C thread, where the port allows (ingest.py)
        if ingest is not None:
            for track in self.router.tracks.values():
                ingest.add_track(track)
        self.events.on_connected()

    def on_transport_failed(self, reason: Failure) -> None:
        if not self.closed:
            self.events.on_failed(reason)

    def on_rtp(self, packet: bytes, now: float) -> None:
        ssrc = _SSRC.unpack_from(packet, 8)[0]
        producer = self._by_ssrc.get(ssrc)
        if producer is not None:
            producer.receive(packet, now)
        else:
            producer = self._rtx_by_ssrc.get(ssrc)
            if producer is not None:
                producer.receive_rtx(packet, now)
                return
            if not self._learn_ssrc(packet, ssrc, now):
                return
        if not self.media_started:
            self.media_started = True
            self.events.on_first_media()

    def _learn_ssrc(self, packet: bytes, ssrc: int, now: float) -> bool:
        """Offers without a=ssrc (allowed by BUNDLE): bind an unknown SSRC by its payload type, once."""
        pt = packet[1] & 0x7F
        producer = self._by_pt.get(pt)
        if producer is not None and producer.ssrc is None:
            producer.ssrc = ssrc
            self._by_ssrc[ssrc] = producer
            producer.receive(packet, now)
            if self.transport.ingest is not None:  # the thread forwards it from its next packet
                self.transport.ingest.add_track(self.router.tracks[producer.kind])
            return True
        producer = self._rtx_by_pt.get(pt)
        if producer is not None and producer.rtx_ssrc is None and producer.ssrc is not None:
            producer.rtx_ssrc = ssrc
            self._rtx_by_ssrc[ssrc] = producer
            producer.receive_rtx(packet, now)
        return False

    def on_rtcp(self, data: bytes, now: float) -> None:
        for packet in self._parse_rtcp(data):
            if isinstance(packet, RtcpSrPacket):
                producer = self._by_ssrc.get(packet.ssrc)
                if producer is not None:
                    producer.on_sender_report(packet.sender_info.ntp_timestamp, packet.sender_info.rtp_timestamp, now)

    def on_tick(self, now: float) -> float | None:
        """NACK retries, the keyframe cadence, reports to the publisher and the input watch. Returns when the
        first of them is next due, or None (the port's next tick) while packets are missing: their retries are
        NACK_RETRY_INTERVAL apart (a gap found between ticks asks for one sooner: `_send_nack`).

        The port puts a returned time on its take-in grid (up to MAX_LATE late); the keyframe cadence asks for a
        tick of its own (`tick_at`), so that the ring's GOP stays `keyframe_interval` long. What the ingest thread
        queued is taken in first: every figure here (packets, bytes, the latest keyframe) is then as new as it."""
        ingest = self.transport.ingest
        if ingest is not None:
            ingest.catch_up()
        due = now + INPUT_WATCH_INTERVAL
        missing = False
        interval = self.settings.keyframe_interval
        for producer in self.producers.values():
            if producer.missing:
                producer.retry_nacks(now)
                missing = missing or bool(producer.missing)
            # a standing keyframe cadence (--keyframe-interval): a cold feed then finds one in the ring
            if interval and producer.asks_keyframes:
                if now - max(producer.keyframe_at, producer.last_keyframe_request) >= interval:
                    producer.request_keyframe(now)  # (which moves last_keyframe_request on, when it sends)
                keyframe_due = max(producer.keyframe_at, producer.last_keyframe_request) + interval
                # (one asked less than KEYFRAME_MIN_INTERVAL ago is asked again no sooner than that)
                self.port.tick_at(self.transport, max(keyframe_due, now + KEYFRAME_MIN_INTERVAL))
        if now >= self._next_rtcp:
            self._next_rtcp = now + rtcp_interval()
            self._send_reports(now)
        self._watch_input(now)
        return None if missing else min(due, self._next_rtcp)

    def _watch_input(self, now: float) -> None:
        transport = self.transport
        if transport.rx_packets != self._seen_packets:
            self._seen_packets = transport.rx_packets
            # when the newest packet came (the watch runs up to a second after it), unless only RTX or a stray SSRC did
            newest = max((p.last_arrival for p in self.producers.values()), default=0.0)
            self._last_rtp = newest if newest > self._last_rtp else now
        elif self.media_started and now - self._last_rtp > self.settings.rtp_activity_timeout:
            # Before the first packet the stream layer's connect deadline applies instead.
            log.info("rtp activity lost transport=%s %s silent=%.1fs", transport.id, transport.label,
                     now - self._last_rtp)
            transport.fail(Failure.RTP_ACTIVITY)
            return
        ceiling = self.settings.bitrate_ceiling
        elapsed = now - self._window_start
        if not ceiling or elapsed < 1.0:
            return
        rate = (transport.rx_bytes - self._window_bytes) * 8 / elapsed
        self._window_start, self._window_bytes = now, transport.rx_bytes
        if rate <= ceiling:
            self._over_since = None
            return
        if self._over_since is None:
            self._over_since = now - elapsed
        if now - self._over_since >= self.settings.bitrate_grace:
            log.info("bitrate over the ceiling transport=%s %s rate=%d ceiling=%d for=%.1fs", transport.id,
                     transport.label, rate, ceiling, now - self._over_since)
            self.port.refusals[PUBLISHER_BITRATE] += 1
            transport.fail(Failure.BITRATE_EXCEEDED)

    # --- feedback to the publisher ----------------------------------------------------------------

    def _send_reports(self, now: float) -> None:
        blocks = [b for p in self.producers.values() if (b := p.report_block(now)) is not None]
        rr = struct.pack("!BBHI", 0x80 | len(blocks), 201, 1 + 6 * len(blocks), self.rtcp_ssrc) + b"".join(blocks)
        ssrcs = [p.ssrc for p in self.producers.values() if p.ssrc is not None and p.kind == "video"]
        if ssrcs:
            # REMB at the configured ceiling: the browser's own loss-based control ramps up to it.
            remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=self.rtcp_ssrc, media_ssrc=0,
                                  fci=pack_remb_fci(self.settings.max_bitrate, ssrcs))
            rr += bytes(remb)
        self.transport.send_rtcp(rr)

    def _send_nack(self, producer: Producer, seqs: list[int]) -> None:
        self.port.tick_at(self.transport, time.monotonic() + NACK_RETRY_INTERVAL)  # its retry, if still missing
        self.transport.send_rtcp(bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=self.rtcp_ssrc,
                                                       media_ssrc=producer.ssrc or 0, lost=sorted(seqs))))

    def _send_pli(self, producer: Producer) -> None:
        if producer.ssrc is not None:
            self.transport.send_rtcp(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self.rtcp_ssrc,
                                                          media_ssrc=producer.ssrc)))

    def _on_keyframe(self, producer: Producer, width: int, height: int) -> None:
        self.events.on_video_size(width, height)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport.close()
        self.router.close()


class PlayerEndpoint(_Endpoint):
    def __init__(self, port: MediaPort, identity: DtlsIdentity, neg: Negotiation, settings: MediaSettings,
                 source: Router, events: EndpointEvents, label: str = "", ice: tuple[str, str] | None = None,
                 ssrcs: dict[str, tuple[int, int | None]] | None = None) -> None:
        super().__init__(port, identity, neg, settings, label, ice)
        self.events = events
        self.consumers: list[Consumer] = []
        self._routes: list[tuple[TrackRouter, Consumer]] = []
        self._by_ssrc: dict[int, Consumer] = {}
        for track in neg.tracks:
            router = source.tracks[track.kind]
            consumer = Consumer(router.producer, track, self.transport, ssrcs.get(track.mid) if ssrcs else None)
            self._routes.append((router, consumer))
            self.consumers.append(consumer)
            self._by_ssrc[consumer.ssrc] = consumer
        self.attached = False
        self._reports_on_core = False  # the core sends this player's sender reports (reports.py)

    @property
    def answer_ssrcs(self) -> dict[str, tuple[int, int | None]]:
        return {c.mid: (c.ssrc, c.rtx_ssrc) for c in self.consumers}

    def on_transport_connected(self, now: float) -> None:
        if self.closed:
            return
        self.attached = True
        for router, consumer in self._routes:
            router.attach(consumer, now)
        if not self.closed:  # (an attach that took in the publisher's hang-up ended this player too)
            self.events.on_connected()

    def on_transport_failed(self, reason: Failure) -> None:
        if not self.closed:
            self._detach()
            self.events.on_failed(reason)

    def on_rtp(self, packet: bytes, now: float) -> None:
        pass  # players send no media to a sendonly answer

    def on_rtcp(self, data: bytes, now: float) -> None:
        for packet in self._parse_rtcp(data):
            if isinstance(packet, RtcpRtpfbPacket):
                consumer = self._by_ssrc.get(packet.media_ssrc)
                if consumer is not None and packet.fmt == RTCP_RTPFB_NACK:
                    consumer.on_nack([s & 0xFFFF for s in packet.lost])
            elif isinstance(packet, RtcpPsfbPacket):
                if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                    consumer = self._by_ssrc.get(packet.media_ssrc)
                    if consumer is None and packet.fmt == RTCP_PSFB_FIR and len(packet.fci) >= 4:
                        consumer = self._by_ssrc.get(_SSRC.unpack_from(packet.fci, 0)[0])
                    if consumer is not None:
                        consumer.request_keyframe(now)
            elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    consumer = self._by_ssrc.get(report.ssrc)
                    if consumer is not None:
                        consumer.on_report(report.fraction_lost, report.packets_lost)

    def on_tick(self, now: float) -> float:
        """A player has nothing periodic but its sender reports: it is next due at the next report. Once every
        track is on the compiled core, the core sends them (reports.py) and the player is never due again."""
        if self._reports_on_core:
            return math.inf
        if now < self._next_rtcp:
            return self._next_rtcp
        self._next_rtcp = now + rtcp_interval()
        ntp = ntp_now()
        # The SRs of the player's tracks in one compound RTCP packet (RFC 3550 §6.1): one SRTCP protect and one
        # datagram per player per interval instead of one per track.
        reports = [_SR_HEADER + body for consumer in self.consumers
                   if (body := consumer.sender_report(now, ntp)) is not None]
        if reports:
            self.transport.send_rtcp(b"".join(reports))
        transport = self.transport  # (an ICE-TCP path has no sockaddr, and its tracks no targets: refused)
        if self.port.take_reports(self, transport.tx, transport.sockaddr, self.consumers, self._next_rtcp):
            self._reports_on_core = True
            return math.inf
        return self._next_rtcp

    def _detach(self) -> None:
        if self._reports_on_core:
            self._reports_on_core = False
            self.port.drop_reports(self)
        for router, consumer in self._routes:
            router.detach(consumer)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._detach()
        self.transport.close()


def new_session_id() -> int:
    return secrets.randbits(62)
