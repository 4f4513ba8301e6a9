"""The RTCP the server sends, read byte by byte from real clients' sockets (after SRTP).

To a publisher: receiver reports about each of its sources, and REMB at --max-bitrate, every 0.5–1.5 s
(RFC 3550 §6.3.1: randomized, never a fixed period). To a player, at such intervals too: a sender report per
source whose packet and octet counts are what the player received, and whose NTP/RTP mappings of audio and video
agree with each other, as the publisher's did (a player's lip sync depends on nothing else).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Callable


from tests.support import peers
from tests.support.rtcptap import Rtcp, RtpSeen, Tap

MAX_BITRATE = 1_234_000  # exactly representable in REMB (mantissa 154250, exponent 3)
CLOCK = {"audio": 48000, "video": 90000}


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached after {timeout}s"
        await asyncio.sleep(0.05)


def sender_ssrcs(pc) -> dict[str, int]:
    return {t.sender.track.kind: t.sender._ssrc for t in pc.getTransceivers() if t.sender.track is not None}


def answer_ssrcs(sdp: str) -> dict[str, int]:
    """kind → the first a=ssrc of that m-section (the media SSRC; RTX comes second in its FID group)."""
    out = {}
    for section in re.split(r"\r?\nm=", sdp)[1:]:
        m = re.search(r"^a=ssrc:(\d+) ", section, re.MULTILINE)
        if m:
            out[section.split(" ", 1)[0]] = int(m.group(1))
    return out


async def test_publisher_gets_randomized_receiver_reports_and_remb(make_server) -> None:
    server = await make_server(max_bitrate=MAX_BITRATE)
    client = await server.client()
    publisher = await peers.publish(client, "rr", width=320, height=240)
    tap = Tap.install(publisher.pc)
    try:
        await publisher.wait_status("PUBLISHING", timeout=10)
        ssrcs = sender_ssrcs(publisher.pc)
        await wait_until(lambda: len(tap.received(201)) >= 10, 20, "10 receiver reports")
    finally:
        await publisher.stop()
        await client.close()

    reports = tap.received(201)
    server_ssrc = reports[0][1].ssrc
    assert all(p.ssrc == server_ssrc for _, p in reports)
    # Each RR compound carries a REMB right after it: the configured ceiling, for the video source.
    compounds = collections.defaultdict(list)
    for t, p in tap.rtcp_in:
        compounds[t].append(p)
    with_rr = [packets for packets in compounds.values() if any(p.pt == 201 for p in packets)]
    for packets in with_rr[1:]:  # (the first may precede the first video packet)
        rembs = [p for p in packets if p.remb_bitrate is not None]
        assert len(rembs) == 1, packets
        assert rembs[0].remb_bitrate == MAX_BITRATE, rembs[0]
        assert rembs[0].remb_ssrcs == [ssrcs["video"]], (rembs[0].remb_ssrcs, ssrcs)

    # Intervals: within 0.5–1.5 s (plus the event loop's scheduling slack) and not a fixed period. (Not the first:
    # the publisher's first ticks come at its connection's own instants, which would hide a fixed period after.)
    times = [t for t, _ in reports][1:]
    intervals = [b - a for a, b in zip(times, times[1:])]
    assert all(0.45 <= i <= 1.6 for i in intervals), intervals
    assert max(intervals) - min(intervals) > 0.15, f"RR intervals look fixed, not randomized: {intervals}"

    # Report blocks: both sources, no loss on loopback, the highest sequence number the publisher had sent,
    # and LSR/DLSR that point at one of the publisher's own sender reports.
    sent_srs = {(p.ntp >> 16) & 0xFFFFFFFF: t for t, p in tap.sent(200)}
    checked_lsr = 0
    for t, rr in reports[1:]:
        by_ssrc = {b["ssrc"]: b for b in rr.blocks}
        assert set(by_ssrc) == set(ssrcs.values()), (rr.blocks, ssrcs)
        for kind, ssrc in ssrcs.items():
            block = by_ssrc[ssrc]
            assert block["fraction_lost"] == 0 and block["lost"] == 0, block
            sent = [p.seq for p in tap.rtp_out if p.ssrc == ssrc and p.t <= t]
            assert sent, kind
            # the RR reports what arrived before it was sent: at most a few packets behind the last one sent
            assert 0 <= (sent[-1] - (block["highest"] & 0xFFFF)) % 65536 <= 8, (kind, sent[-1], block)
            if block["lsr"]:
                assert block["lsr"] in sent_srs, (kind, block)
                delay = block["dlsr"] / 65536
                assert 0 <= delay <= t - sent_srs[block["lsr"]] + 0.05, (kind, block, t - sent_srs[block["lsr"]])
                checked_lsr += 1
    assert checked_lsr >= 4, "the publisher's sender reports were never echoed in LSR"


def _offset(sent: list[RtpSeen], received: list[RtpSeen]) -> int:
    """The RTP timestamp offset the server applied (player − publisher), found by payload (a tone repeats its
    payloads: the packet with that payload sent last before the player got it)."""
    by_payload: dict[bytes, list[RtpSeen]] = collections.defaultdict(list)
    for p in sent:
        by_payload[p.payload].append(p)
    offsets: collections.Counter[int] = collections.Counter()
    for r in received:
        candidates = [p for p in by_payload.get(r.payload, ()) if p.t <= r.t]
        if candidates:
            offsets[(r.ts - candidates[-1].ts) & 0xFFFFFFFF] += 1
    assert offsets, "no packet of the player matched one the publisher sent"
    offset, count = offsets.most_common(1)[0]
    assert count >= 0.9 * sum(offsets.values()), offsets
    return offset


def assert_in_sync(errors: list[float]) -> None:
    """Audio and video SRs agree: the server maps both through one clock offset and the publisher's own SR
    pairs. A bug (a wrong clock rate, a per-track offset, per-track clock offsets) is off by milliseconds to
    seconds."""
    shown = [round(e * 1000, 2) for e in errors]
    assert all(abs(e) <= 0.002 for e in errors), shown


def _signed(diff: int) -> int:
    diff &= 0xFFFFFFFF
    return diff - (1 << 32) if diff >= 1 << 31 else diff


class SrSession:
    """One publisher and one player, both tapped, run until the player has `n` SRs per source."""

    def __init__(self, pub_tap: Tap, tap: Tap, ours: dict[str, int], theirs: dict[str, int]) -> None:
        self.pub_tap, self.tap, self.ours, self.theirs = pub_tap, tap, ours, theirs

    def srs(self, kind: str) -> list[tuple[float, Rtcp]]:
        return [(t, p) for t, p in self.tap.received(200) if p.ssrc == self.ours[kind]]

    @classmethod
    async def run(cls, server, n: int) -> SrSession:
        pub_client, play_client = await server.client(), await server.client()
        publisher = await peers.publish(pub_client, "sr", width=320, height=240)
        pub_tap = Tap.install(publisher.pc)
        player = None
        try:
            await publisher.wait_status("PUBLISHING", timeout=10)
            player = await peers.play(play_client, "sr")
            tap = Tap.install(player.pc)
            await player.wait_status("PLAYING", timeout=10)
            session = cls(pub_tap, tap, answer_ssrcs(player.answer_sdp), sender_ssrcs(publisher.pc))
            await wait_until(lambda: min(len(session.srs("audio")), len(session.srs("video"))) >= n, 4 * n,
                             f"{n} SRs per source")
        finally:
            if player is not None:
                await player.stop()
            await publisher.stop()
            await pub_client.close()
            await play_client.close()
        return session

    def sync_errors(self) -> list[float]:
        """For each tick's audio+video SR pair: the same instant of the publisher's capture clock, through
        each SR, as NTP time; audio minus video, in seconds. The instant and the audio RTP time at it come from
        the publisher's own SRs (the mapping it declared). Which of its recent SRs the server had used is not
        visible from outside, and each one is stale by however late aiortc's loop ran when it stamped it (up
        to hundreds of ms on a loaded machine); so every combination of its last three audio and video SRs
        before the player's pair is tried, and the best agreement is the pair's error."""
        tap, pub_tap, ours, theirs = self.tap, self.pub_tap, self.ours, self.theirs
        offsets = {kind: _offset([p for p in pub_tap.rtp_out if p.ssrc == theirs[kind]],
                                 [p for p in tap.rtp_in if p.ssrc == ours[kind]]) for kind in ours}
        pub_srs = {kind: [(t, p) for t, p in pub_tap.sent(200) if p.ssrc == theirs[kind]] for kind in theirs}
        video_by_ntp = {p.ntp: (t, p) for t, p in self.srs("video")}
        pairs = [((ta, sra), video_by_ntp[sra.ntp]) for ta, sra in self.srs("audio") if sra.ntp in video_by_ntp]
        assert len(pairs) >= len(self.srs("audio")) - 2, "one tick sends both SRs of a player, with one NTP time"
        errors = []
        for (ta, sra), (tv, srv) in pairs:
            before = {kind: [p for t, p in pub_srs[kind] if t < max(ta, tv)][-3:] for kind in pub_srs}
            if not before["audio"] or not before["video"]:
                continue
            candidates = []
            for pa in before["audio"]:
                for pv in before["video"]:
                    instant = pv.ntp_seconds
                    video_rtp = pv.rtp_ts
                    audio_rtp = pa.rtp_ts + round((instant - pa.ntp_seconds) * CLOCK["audio"])
                    ntp_video = srv.ntp_seconds + _signed(video_rtp + offsets["video"] - srv.rtp_ts) / CLOCK["video"]
                    ntp_audio = sra.ntp_seconds + _signed(audio_rtp + offsets["audio"] - sra.rtp_ts) / CLOCK["audio"]
                    candidates.append(ntp_audio - ntp_video)
            errors.append(min(candidates, key=abs))
        assert len(errors) >= 3, errors
        print("A/V mapping disagreement per SR pair (ms):", [round(e * 1000, 2) for e in errors])
        return errors


async def test_player_sender_reports_count_what_was_received(server) -> None:
    session = await SrSession.run(server, 6)
    # After its first report, once both of its tracks are on the compiled core, the core sends the player's
    # reports (media/reports.py): most of those checked below are the core's.
    assert server.port.core_reports >= 3, server.port.core_reports
    # Counts: what the player had received of that SSRC when the SR arrived (the server sends media and
    # RTCP from one socket, so nothing the SR counts can arrive after it). Slack: 2 packets.
    for kind, ssrc in session.ours.items():
        checked = 0
        for t, sr in session.srs(kind):
            seen: dict[int, RtpSeen] = {}
            for p in session.tap.rtp_in:
                if p.t > t:
                    break
                if p.ssrc == ssrc:
                    seen.setdefault(p.seq, p)
            packets, octets = len(seen), sum(len(p.payload) for p in seen.values())
            assert abs(sr.packets - packets) <= 2, (kind, sr.packets, packets)
            average = octets / max(packets, 1)
            assert abs(sr.octets - octets) <= 2 * average + 1, (kind, sr.octets, octets)
            checked += packets > 0
        assert checked >= 5, kind
    # Intervals (after the first, which may be the Python path's): 0.5–1.5 s apart and not a fixed period, as
    # the publisher's RRs (RFC 3550 §6.3.1); both tracks' SRs go in one compound, so the video ones stand for both.
    times = [t for t, _ in session.srs("video")][1:]
    intervals = [b - a for a, b in zip(times, times[1:])]
    assert all(0.45 <= i <= 1.6 for i in intervals), intervals
    assert max(intervals) - min(intervals) > 0.15, f"SR intervals look fixed, not randomized: {intervals}"
    # The A/V mapping agrees (the next test checks it with more SRs); a wrong clock rate or offset is off by
    # seconds, a per-track SR offset by up to a frame interval.
    assert_in_sync(session.sync_errors())


async def test_player_sender_reports_keep_audio_video_sync(server_shapes) -> None:
    """Lip sync: the same capture instant maps to the same NTP time in a player's audio and video SRs (the
    publisher's clock offset is one for all its tracks: media/producer.py SenderClock). With two workers and
    spread placement the player reads a relayed copy: the publisher's SRs travel to its worker too."""
    server = server_shapes
    session = await SrSession.run(server, 8)
    assert_in_sync(session.sync_errors())
