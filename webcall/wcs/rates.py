"""Per-stream rates: deltas of the media plane's counters over the time between two samples.

The media plane only counts (plain ints on the packet path); the hub samples every stream about once a
second (`rate_interval`) and turns two consecutive readings into rates here. What "video rate" means is
chosen to match what the official SDK compares it with (spec §7): the browser's getStats
`bytesSent`/`bytesReceived` per RFC 3550 §6.4.1 — RTP payload octets, retransmissions included.
"""

from __future__ import annotations

from typing import Any, NamedTuple


# Reading and Rates are named tuples, not frozen dataclasses: both are made for every stream every second, and
# a tuple is made in about half the time (a frozen dataclass sets each field through object.__setattr__).
class Reading(NamedTuple):
    """Cumulative counters of one stream at one instant (what the media plane counted so far)."""

    video_octets: int = 0  # RTP payload octets of video (publisher: received; player: sent, incl. RTX)
    audio_octets: int = 0
    video_packets: int = 0
    audio_packets: int = 0
    frames: int = 0  # video frames (RTP marker bits)
    # When the media plane read these counters (time.monotonic(), one clock for every process of the host).
    # None: just now. Media workers report their counters once per rate interval, so a sample may find the
    # same report as the last one; rates are taken between the reports' own times, never between our samples.
    at: float | None = None


def _reported_at(counters: object) -> float | None:
    """A Reading's `at` for these counters: when a media worker read them (the control process's views of a
    worker's counters carry `reported_at`); None for the in-process plane, whose counters are live."""
    return getattr(counters, "reported_at", None)


def publisher_reading(video: Any, audio: Any) -> Reading:
    """What a publisher's tracks received (WCS publications and WHIP alike): each a Producer, a media worker's
    ProducerView, or None."""
    return Reading(
        video_octets=video.octets if video else 0, audio_octets=audio.octets if audio else 0,
        video_packets=video.packets if video else 0, audio_packets=audio.packets if audio else 0,
        frames=video.frames if video else 0,
        at=_reported_at(video or audio),
    )


def player_reading(video: Any, audio: Any) -> Reading:
    """What a player's tracks were sent, retransmissions included (WCS playbacks and WHEP alike): each a Consumer,
    a media worker's ConsumerView, or None."""
    return Reading(
        video_octets=video.octets + video.retransmit_octets if video else 0,
        audio_octets=audio.octets + audio.retransmit_octets if audio else 0,
        video_packets=video.packets + video.retransmits if video else 0,
        audio_packets=audio.packets + audio.retransmits if audio else 0,
        # Every frame of the publisher reaches this player once it started: the publisher's frame count costs
        # nothing per forwarded packet. An interval that forwarded nothing shows 0 fps.
        frames=video.producer.frames if video else 0,
        at=_reported_at(video or audio),
    )


class Rates(NamedTuple):
    """What one interval measured."""

    video_rate: int = 0  # bit/s
    audio_rate: int = 0  # bit/s
    video_packet_rate: float = 0.0  # packets/s
    audio_packet_rate: float = 0.0
    fps: int = 0  # frames/s, rounded
    interval: float = 0.0  # seconds the rates are averaged over (0: no interval measured yet)


class RateMeter:
    """Turns successive readings of one stream into rates; the first reading only sets the baseline."""

    __slots__ = ("_time", "_reading", "latest", "_repeated")

    def __init__(self) -> None:
        self._time: float | None = None
        self._reading = Reading()
        self.latest = Rates()
        self._repeated = False  # the last update gave the rates before it again (a report had not come yet)

    def update(self, now: float, reading: Reading) -> Rates | None:
        """The rates since the previous reading; None for the first one. A reading no newer than the last (a media
        worker's report that has not come yet: its timer and the sampler's drift past each other) keeps the
        baseline and gives the last rates again, once, so that a rate message still goes a second after the last:
        the SDK takes the bytes its browser counted between two messages as a second's worth (spec §7). Twice in
        a row (the reports stopped): None."""
        now = now if reading.at is None else reading.at
        previous, since = self._reading, self._time
        if since is not None and now <= since:
            if self._repeated or self.latest.interval == 0 or reading.at is None:
                return None  # (live counters: no time passed, nothing to say)
            self._repeated = True
            return self.latest
        self._repeated = False
        self._time, self._reading = now, reading
        if since is None:
            return None
        dt = now - since
        self.latest = Rates(
            video_rate=round(8 * max(0, reading.video_octets - previous.video_octets) / dt),
            audio_rate=round(8 * max(0, reading.audio_octets - previous.audio_octets) / dt),
            video_packet_rate=max(0, reading.video_packets - previous.video_packets) / dt,
            audio_packet_rate=max(0, reading.audio_packets - previous.audio_packets) / dt,
            fps=round(max(0, reading.frames - previous.frames) / dt),
            interval=dt,
        )
        return self.latest
