"""A Producer is one incoming track of a publisher: arrival, the ring, NACKs upstream, keyframes.

`receive()` is the hottest function of the server: it runs once per publisher packet. Work that does not
depend on any reader (loss tracking, keyframe detection, storing in the ring) is done here once; then the
packet goes to `deliver`, the track's router (media/router.py), which fans it out to its readers. The
producer knows no reader: late joiners of any kind start from `current_gop()`.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable

from ..protocol.sdp import EXT_MID, Track
from .rtp import KEYFRAME_PROBES, split, ts_delta

NTP_UNIT = float(1 << 32)  # a 64-bit NTP timestamp counts seconds in units of 2**-32
SENDER_CLOCK_SAMPLES = 8  # sender reports (of all the publisher's tracks) the clock offset is the minimum of
SR_WAIT = 5.0  # s a track without sender reports waits for its first once a sibling track has sent one

# deliver(packet, ext_seq, ts, keyframe, csrc_end, ext_end, end): the router's entry (media/router.py)
Deliver = Callable[[bytes, int, int, bool, int, int, int], None]

RING_SIZE = 1024  # ≈ 7 s of 600 kbps video: enough for NACKs and for a keyframe replay
RING_MASK = RING_SIZE - 1
MAX_NACK_BATCH = 64  # a bigger gap is a burst loss: ask for a keyframe instead
NACK_RETRIES = 6  # ≈ 0.5 s of tries: at 5 % loss each way one try fails ~10 % of the time, six ~1e-6
NACK_RETRY_INTERVAL = 0.08
KEYFRAME_MIN_INTERVAL = 0.3

_TS = struct.Struct("!I")
NTP_UNIX_OFFSET = 2208988800  # seconds from the NTP epoch (1900) to the Unix epoch (1970)


def ntp_now() -> int:
    """Our wall clock as a 64-bit NTP timestamp: what aiortc's `current_ntp_time` gives (the same clock), from
    one `time_ns()` instead of datetime arithmetic — it runs for every player's sender report."""
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    return ((seconds + NTP_UNIX_OFFSET) << 32) | ((nanoseconds << 32) // 1_000_000_000)


class SenderClock:
    """How far behind ours the publisher's NTP clock is, as its sender reports show: one value for all of its
    tracks, so the sender reports we send its players map audio and video to the same instants (lip sync).

    Each SR gives (our NTP time at arrival − the SR's NTP time) = network delay + how stale the SR's NTP/RTP pair
    already was when it left (aiortc stamps the last packet sent, up to a frame earlier). The minimum over the
    last few SRs of every track is the least stale one; the per-track pairs are used as the publisher gave them.
    """

    __slots__ = ("_samples", "offset", "first_at")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=SENDER_CLOCK_SAMPLES)
        self.offset: float | None = None  # seconds: our NTP time − the publisher's
        self.first_at: float | None = None  # when the first SR of any of its tracks arrived (monotonic)

    def observe(self, local_ntp: int, sender_ntp: int, now: float) -> None:
        self._samples.append((local_ntp - sender_ntp) / NTP_UNIT)
        self.offset = min(self._samples)
        if self.first_at is None:
            self.first_at = now


class Producer:
    def __init__(
        self,
        track: Track,
        *,
        send_nack: Callable[[Producer, list[int]], None],
        send_keyframe_request: Callable[[Producer], None],
        on_keyframe: Callable[[Producer, int, int], None],
    ) -> None:
        self.kind = track.kind
        self.codec = track.codec
        self.clock_rate = track.codec.clock_rate
        self.ssrc = track.ssrc
        self.rtx_ssrc = track.rtx_ssrc
        self.payload_type = track.codec.payload_type
        self.rtx_payload_type = track.codec.rtx_payload_type
        self.extensions = {uri: ext_id for uri, ext_id in track.extensions.items() if uri != EXT_MID}
        self.nack_enabled = "nack" in track.codec.rtcp_fb
        self._probe = KEYFRAME_PROBES.get(track.codec.name.upper()) if track.kind == "video" else None
        self._send_nack = send_nack
        self._send_keyframe_request = send_keyframe_request
        self._on_keyframe = on_keyframe

        self.deliver: Deliver | None = None  # the track's router, once one reads this producer
        # Takes in what an ingest thread has queued (ingest.py): the ring may be a few ms behind the thread.
        self.catch_up: Callable[[], None] | None = None
        self.ring: list[bytes | None] = [None] * RING_SIZE

        # Sequence state: extended = cycles + seq (RFC 3550 A.1).
        self.base_seq = -1
        self.highest_seq = -1
        self.cycles = 0
        self.missing: dict[int, list[float | int]] = {}  # ext seq -> [next try time, tries]
        self.keyframe_ext_seq = -1  # first packet of the latest keyframe
        self.previous_keyframe_ext_seq = -1  # first packet of the keyframe before it
        self.keyframe_ts = -1
        self.last_keyframe_request = -1e9
        self.keyframe_at = 0.0  # arrival of the latest keyframe's first packet (monotonic)

        # Timing for sender reports and jitter.
        self.last_ts = 0
        self.last_arrival = 0.0
        self.sr_ntp = 0
        self.sr_rtp = 0
        self.sr_arrival = 0.0
        self.sr_local_ntp = 0  # our NTP time when the latest SR arrived
        self.sender_clock = SenderClock()  # shared by the publisher's tracks (the endpoint sets one for all)
        self._transit = None
        self.jitter = 0.0

        # Counters.
        self.packets = self.octets = self.duplicates = self.malformed = 0
        self.recovered = self.nacks_sent = self.keyframe_requests = self.keyframes = 0
        self.frames = 0
        self.width = self.height = 0
        self._rr_expected_prior = self._rr_received_prior = 0

    # --- the hot path ---------------------------------------------------------------------------

    def receive(self, packet: bytes, now: float) -> None:
        seq = (packet[2] << 8) | packet[3]
        highest = self.highest_seq
        newest = True
        if highest < 0:
            self.base_seq = self.highest_seq = seq
            ext_seq = seq
        else:
            delta = (seq - highest) & 0xFFFF
            if delta == 0:
                self.duplicates += 1
                return
            if delta < 0x8000:
                if delta > 1 and self.nack_enabled:  # before the wrap is counted: `highest` is pre-wrap
                    self._on_gap(self.cycles + highest, delta, now)
                if seq < highest:
                    self.cycles += 0x10000
                self.highest_seq = seq
                ext_seq = self.cycles + seq
            else:  # behind the highest: a retransmission or a reordered packet
                newest = False
                ext_seq = self.cycles + seq - (0x10000 if seq > highest else 0)
                if self.missing.pop(ext_seq, None) is not None:
                    self.recovered += 1
                else:
                    stored = self.ring[seq & RING_MASK]
                    if stored is not None and stored[2:4] == packet[2:4]:
                        self.duplicates += 1
                        return
        try:
            csrc_end, ext_end, end = split(packet)
        except ValueError:
            self.malformed += 1
            return
        self.packets += 1
        self.octets += end - ext_end
        self.ring[seq & RING_MASK] = packet
        ts = _TS.unpack_from(packet, 4)[0]
        if newest:  # timing follows the newest packet only
            self.last_ts, self.last_arrival = ts, now
            transit = now * self.clock_rate - ts
            if self._transit is not None:
                d = abs(transit - self._transit)
                self.jitter += (d - self.jitter) / 16
            self._transit = transit

        keyframe = False
        if self._probe is not None:
            if packet[1] & 0x80:
                self.frames += 1
            size = self._probe(packet, ext_end, end)
            if size is not None:
                keyframe = True
                if ts != self.keyframe_ts:
                    if ext_seq > self.keyframe_ext_seq:  # newer keyframe, possibly recovered by NACK
                        self._keyframe_started(ext_seq, ts, size, now)
                elif ext_seq < self.keyframe_ext_seq:  # an earlier packet of the same access unit
                    self.keyframe_ext_seq = ext_seq

        deliver = self.deliver
        if deliver is not None:
            deliver(packet, ext_seq, ts, keyframe, csrc_end, ext_end, end)

    def receive_rtx(self, packet: bytes, now: float) -> None:
        """Unwrap an RTX packet (RFC 4588) into the original and receive that."""
        try:
            csrc_end, ext_end, end = split(packet)
        except ValueError:
            self.malformed += 1
            return
        if end - ext_end < 3:  # padding-only probe packets carry no media
            return
        osn = packet[ext_end : ext_end + 2]
        original = (
            bytes((packet[0] & 0xDF, (packet[1] & 0x80) | self.payload_type))
            + osn
            + packet[4:8]
            + self.ssrc.to_bytes(4, "big")
            + packet[12:ext_end]
            + packet[ext_end + 2 : end]
        )
        self.receive(original, now)

    # --- loss -------------------------------------------------------------------------------------

    def _on_gap(self, ext_highest: int, delta: int, now: float) -> None:
        if delta - 1 > MAX_NACK_BATCH:
            self.request_keyframe(now)
            return
        lost = [ext_highest + i for i in range(1, delta)]
        for ext_seq in lost:
            self.missing[ext_seq] = [now + NACK_RETRY_INTERVAL, 1]
        self.nacks_sent += 1
        self._send_nack(self, [s & 0xFFFF for s in lost])

    def retry_nacks(self, now: float) -> None:
        """Called from the endpoint's tick while packets are missing."""
        due = []
        gave_up = False
        for ext_seq, state in list(self.missing.items()):
            if state[0] > now:
                continue
            if state[1] >= NACK_RETRIES:
                del self.missing[ext_seq]
                gave_up = True
                continue
            state[0] = now + NACK_RETRY_INTERVAL
            state[1] += 1
            due.append(ext_seq & 0xFFFF)
        if due:
            self.nacks_sent += 1
            self._send_nack(self, due)
        if gave_up:  # a packet players will never get: their frames are broken until the next keyframe
            self.request_keyframe(now)
        if len(self.missing) > 4 * MAX_NACK_BATCH:  # hopeless: start over from a keyframe
            self.missing.clear()
            self.request_keyframe(now)

    def lookup(self, seq: int) -> bytes | None:
        packet = self.ring[seq & RING_MASK]
        if packet is not None and ((packet[2] << 8) | packet[3]) == seq:
            return packet
        return None

    # --- keyframes --------------------------------------------------------------------------------

    def _keyframe_started(self, ext_seq: int, ts: int, size: tuple[int, int], now: float) -> None:
        # H264 may mark several packets of one access unit (SPS, then the IDR): the first one counts.
        self.keyframes += 1
        self.keyframe_at = now
        self.previous_keyframe_ext_seq = self.keyframe_ext_seq
        self.keyframe_ext_seq = ext_seq
        self.keyframe_ts = ts
        width, height = size
        if width and height and (width, height) != (self.width, self.height):
            self.width, self.height = width, height
            self._on_keyframe(self, width, height)

    @property
    def asks_keyframes(self) -> bool:
        """A video track whose keyframes this producer recognises: it can ask its publisher for one (PLI)."""
        return self._probe is not None

    def request_keyframe(self, now: float) -> None:
        """PLI to the publisher, at most once per KEYFRAME_MIN_INTERVAL: many players share one keyframe."""
        if not self.asks_keyframes or now - self.last_keyframe_request < KEYFRAME_MIN_INTERVAL:
            return
        self.last_keyframe_request = now
        self.keyframe_requests += 1
        self._send_keyframe_request(self)

    # --- the current group of pictures ----------------------------------------------------------------

    def up_to_date(self) -> None:
        """Take in what an ingest thread still holds for this track (ingest.py): the ring, the keyframes and the
        counters then are as new as its last packet. What reads the ring from outside the packet path (a feed or
        a snapshot starting) does this first; the ring's own readers below do it themselves."""
        if self.catch_up is not None:
            self.catch_up()

    @property
    def newest_ext_seq(self) -> int:
        """Extended sequence number of the newest packet (-1 before the first)."""
        return self.cycles + self.highest_seq if self.highest_seq >= 0 else -1

    def current_gop(self, max_packets: int = RING_SIZE) -> list[tuple[int, bytes]] | None:
        """(ext_seq, packet) from the latest keyframe's first packet on, in order, up to the first hole (what an
        ingest thread still holds in its queue taken in first).

        What a late joiner of any kind starts from (a player's replay, a snapshot, a muxer). None when there is
        no keyframe in the ring, or when the GOP is longer than `max_packets`. The packets are references into
        the ring: nothing is copied. A caller that needs the whole GOP checks that the last one is the newest.
        """
        self.up_to_date()
        return self.packets_from(self.keyframe_ext_seq, max_packets)

    def packets_from(self, first: int, max_packets: int = RING_SIZE) -> list[tuple[int, bytes]] | None:
        """(ext_seq, packet) from `first` to the newest, up to the first hole; None when `first` is unknown (< 0)
        or out of the ring, or more than `max_packets` back."""
        self.up_to_date()
        newest = self.newest_ext_seq
        if first < 0 or newest < 0 or newest - first >= min(max_packets, RING_SIZE):
            return None
        packets = []
        for ext_seq in range(first, newest + 1):
            packet = self.lookup(ext_seq & 0xFFFF)
            if packet is None:
                break  # a hole: what follows cannot be decoded cleanly
            packets.append((ext_seq, packet))
        return packets or None

    def recent(self, count: int = RING_SIZE) -> list[tuple[int, bytes]]:
        """The newest packets (ext_seq, packet), at most `count`, oldest first, back to the first hole."""
        self.up_to_date()
        newest = self.newest_ext_seq
        packets = []
        for ext_seq in range(newest, max(-1, newest - min(count, RING_SIZE)), -1):
            packet = self.lookup(ext_seq & 0xFFFF)
            if packet is None:
                break
            packets.append((ext_seq, packet))
        packets.reverse()
        return packets

    def sender_seconds(self, rtp_ts: int) -> float | None:
        """When the publisher sampled RTP timestamp `rtp_ts`, in its NTP seconds, by its latest SR (None before
        one): the one clock its tracks share, to line up their packets."""
        if not self.sr_arrival:
            return None
        return self.sr_ntp / NTP_UNIT + ts_delta(rtp_ts, self.sr_rtp) / self.clock_rate

    def arrival_of(self, rtp_ts: int) -> float:
        """When a packet with RTP timestamp `rtp_ts` arrived, or would have, judged from the newest packet's
        arrival (our monotonic clock): without sender reports, the way to line up this track with another."""
        return self.last_arrival - ts_delta(self.last_ts, rtp_ts) / self.clock_rate

    # --- statistics (read by the streams layer once a second; not on the packet path) ---------------

    @property
    def lost(self) -> int:
        """Cumulative packets lost (RFC 3550 A.3: expected − received; retransmissions count as received)."""
        if self.highest_seq < 0:
            return 0
        return max(0, self.cycles + self.highest_seq - self.base_seq + 1 - self.packets)

    # --- RTCP -------------------------------------------------------------------------------------

    def on_sender_report(self, ntp: int, rtp_ts: int, now: float, local_ntp: int | None = None) -> None:
        """The publisher's SR for this track; `local_ntp` is our NTP time at its arrival (default: the clock)."""
        self.sr_ntp, self.sr_rtp, self.sr_arrival = ntp, rtp_ts, now
        self.sr_local_ntp = ntp_now() if local_ntp is None else local_ntp
        self.sender_clock.observe(self.sr_local_ntp, ntp, now)

    def rtp_time_at(self, now: float, ntp: int | None = None) -> int | None:
        """The publisher's RTP clock at `now` (our NTP time `ntp`): from its latest SR through the publisher's
        clock offset (the same for all its tracks), else from the SR's arrival, else from the latest packet.

        None while this track has no SR yet but a sibling has, for up to SR_WAIT s: a mapping from packet
        arrival would disagree with the sibling's by the network's jitter (seen: 11–21 ms), and a player's SRs
        must map audio and video to the same instants; no SR is better than a wrong one."""
        clock = self.sender_clock
        if self.sr_arrival:
            if ntp is not None and clock.offset is not None:
                elapsed = (ntp - self.sr_ntp) / NTP_UNIT - clock.offset  # publisher seconds since its SR's instant
                return int(self.sr_rtp + elapsed * self.clock_rate) & 0xFFFFFFFF
            return int(self.sr_rtp + (now - self.sr_arrival) * self.clock_rate) & 0xFFFFFFFF
        if clock.first_at is not None and now - clock.first_at < SR_WAIT:
            return None  # a sibling has had an SR: this track waits for its own
        if self.last_arrival:
            return int(self.last_ts + (now - self.last_arrival) * self.clock_rate) & 0xFFFFFFFF
        return None

    def report_block(self, now: float) -> bytes | None:
        """An RTCP receiver report block (RFC 3550 §6.4.1) for this source."""
        if self.highest_seq < 0 or self.ssrc is None:
            return None
        ext_highest = self.cycles + self.highest_seq
        expected = ext_highest - self.base_seq + 1
        lost = max(0, min(expected - self.packets, 0x7FFFFF))
        expected_interval = expected - self._rr_expected_prior
        received_interval = self.packets - self._rr_received_prior
        self._rr_expected_prior, self._rr_received_prior = expected, self.packets
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        lsr = (self.sr_ntp >> 16) & 0xFFFFFFFF
        dlsr = int((now - self.sr_arrival) * 65536) if self.sr_arrival else 0
        return struct.pack(
            "!IB3sIIII", self.ssrc, min(fraction, 255), lost.to_bytes(3, "big"), ext_highest & 0xFFFFFFFF,
            int(self.jitter) & 0xFFFFFFFF, lsr, dlsr & 0xFFFFFFFF,
        )

    def close(self) -> None:
        self.deliver = None
        self.ring = [None] * RING_SIZE  # release packet memory now, not when the last reference dies
        self.missing.clear()

