"""An MSE player's own timeline (webcall/mse/catchup.py): untouched until the SDK has its 2 s start buffer, then
pulled in by leaving out one audio frame in DROP_EVERY, until the player plays KEEP_MS behind what it has been sent,
however its start came; every track stays strictly increasing, keyframes and headers are never left out. Records
are read back with a parser of the test's own, and where the player plays is worked out here from the SDK's rule
(it starts when its queue spans 2 s on every track, then plays at normal speed)."""

from __future__ import annotations

import struct

from webcall.mse import catchup, flv

FRAME_MS = 1024 / 48  # AAC-LC at 48 kHz


def parse(chunk: bytes) -> list[tuple[int, int, bytes]]:
    out, pos = [], 0
    while pos < len(chunk):
        tag, ts, size = struct.unpack_from(">BiI", chunk, pos)
        out.append((tag, ts, chunk[pos + 9:pos + 9 + size]))
        pos += 9 + size
    assert pos == len(chunk)
    return out


def stream(seconds: float, audio: bool = True) -> list[tuple[float, bytes]]:
    recs = [(0.0, flv.avc_sequence_header(0, b"\x67\x42\xc0\x1e", b"\x68\xce"))]
    recs += [(0.0, flv.aac_sequence_header(0, b"\x11\x88"))] if audio else []
    recs += [(i * 1000 / 30, flv.avc_frame(int(i * 1000 / 30), [b"\x65\x01" if i % 60 == 0 else b"\x41\x01"],
                                           i % 60 == 0)) for i in range(int(seconds * 30))]
    if audio:
        frames = int(seconds * 1000 / FRAME_MS)
        recs += [(j * FRAME_MS, flv.aac_frame(int(j * FRAME_MS), b"\x21")) for j in range(frames)]
    return sorted(recs, key=lambda r: r[0])


def run(recs: list[tuple[float, bytes]]) -> tuple[catchup.CatchUp, list[tuple[float, int, int, bytes]]]:
    c, sent = catchup.CatchUp(), []
    for t, rec in recs:
        send(c, [rec], t, sent)  # each record sent as it is made
    return c, sent


def send(c: catchup.CatchUp, batch: list[bytes], at_ms: float, sent: list) -> None:
    """One batch, sent at `at_ms` (test clock), read back into `sent`."""
    for chunk in c.rewrite(batch, now=at_ms / 1000):
        sent += [(at_ms, tag, ts, payload) for tag, ts, payload in parse(chunk)]


def live_after(c: catchup.CatchUp, recs: list[tuple[float, bytes]], from_ms: float, sent_at: float,
               sent: list) -> None:
    """The records made after `from_ms`, each sent as it is made: `sent_at` (test clock, ms) for the first."""
    for t, rec in recs:
        if t > from_ms:
            send(c, [rec], t - from_ms + sent_at, sent)


def is_media(tag: int, payload: bytes) -> bool:
    return (payload[:1] if tag == flv.AUDIO else payload[1:2]) == b"\x01"


def played_behind(sent: list[tuple[float, int, int, bytes]]) -> float:
    """Plays what was sent as the SDK does: from the first record, once the records span more than 2 s on every
    track, at normal speed while it has media, waiting where it runs out. How far behind the end of what it was
    sent it plays when the last record arrives (ms)."""
    media = [(t, tag, ts) for t, tag, ts, p in sent if is_media(tag, p)]
    tracks = {tag for _, tag, _ in media}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    position = clock = None
    for t, tag, ts in media:
        if position is not None:  # it played on since the last record, up to the end of what it had
            position, clock = max(position, min(position + (t - clock), min(last.values()))), t
        first.setdefault(tag, ts)
        last[tag] = ts
        if position is None and first.keys() == tracks and all(last[k] - first[k] > 2000 for k in tracks):
            position, clock = min(first.values()), t
    assert position is not None, "the player never started"
    return min(last.values()) - position


def test_untouched_until_the_start_span_then_pulled_in_to_keep() -> None:
    c, sent = run(stream(20))  # sent as made: the SDK starts when the records span 2 s, at 2 s
    early = [(t, ts) for t, tag, ts, _ in sent if t < catchup.START_SPAN_MS]
    assert early and all(abs(t - ts) < 1 for t, ts in early)  # the SDK's start buffer fills at the real pace
    assert abs(played_behind(sent) - catchup.KEEP_MS) <= 64
    assert c.dropped and abs(c.shift - (catchup.SDK_START_MS - catchup.KEEP_MS)) <= 64
    speed = catchup.DROP_EVERY / (catchup.DROP_EVERY - 1)
    pulled = catchup.SDK_START_MS - catchup.KEEP_MS
    caught = next(t for t, _, ts, _ in sent if t - ts >= pulled - 64)
    assert caught < catchup.START_SPAN_MS + pulled / (1 - 1 / speed) + 200


def test_tracks_stay_increasing_and_only_audio_frames_are_left_out() -> None:
    c, sent = run(stream(20))
    for tag in (flv.VIDEO, flv.AUDIO):
        times = [ts for _, g, ts, p in sent if g == tag and (p[:1] if tag == flv.AUDIO else p[1:2]) == b"\x01"]
        assert all(b > a for a, b in zip(times, times[1:]))
    videos = [p for _, g, _, p in sent if g == flv.VIDEO]
    assert len(videos) == 1 + 20 * 30  # the avcC and every frame, keyframes included
    audios = [p for _, g, _, p in sent if g == flv.AUDIO and p[:1] == b"\x01"]
    assert len(audios) == int(20000 / FRAME_MS) - c.dropped and c.dropped > 0
    audio_ts = [ts for _, g, ts, p in sent if g == flv.AUDIO and p[:1] == b"\x01"]
    gaps = [b - a for a, b in zip(audio_ts, audio_ts[1:])]
    assert max(gaps) <= FRAME_MS + 2  # contiguous: what is left out is taken up, not a hole


def test_video_only_is_pulled_in_by_shorter_frame_intervals() -> None:
    c, sent = run(stream(20, audio=False))
    assert c.dropped == 0 and len([1 for _, g, _, _ in sent if g == flv.VIDEO]) == 1 + 600
    assert abs(played_behind(sent) - catchup.KEEP_MS) <= 40


def test_a_longer_join_burst_is_made_up_too() -> None:
    recs = stream(20)
    c, sent = catchup.CatchUp(), []
    send(c, [rec for t, rec in recs if t <= 3500], 0, sent)  # a joiner given two GOPs at once: 3.5 s behind
    live_after(c, recs, 3500, 0, sent)
    assert abs(played_behind(sent) - catchup.KEEP_MS) <= 64 and c.shift >= 3500 - catchup.KEEP_MS - 64


def test_a_backfill_sent_late_is_made_up_with_what_piled_up_meanwhile() -> None:
    """A new feed's backfill (2.4 s of the past) reaches the player only after the feed has transcoded it; the
    live records made meanwhile follow at once. The player starts from the burst's first record, so it is behind
    by the burst's span plus that transcoding time."""
    recs = stream(20)
    transcode_ms = 700
    c, sent = catchup.CatchUp(), []
    send(c, [rec for t, rec in recs if t <= 2400], 0, sent)  # the burst: the SDK starts at once
    send(c, [rec for t, rec in recs if 2400 < t <= 2400 + transcode_ms], 50, sent)  # what piled up meanwhile
    live_after(c, recs, 2400 + transcode_ms, 50, sent)
    assert abs(played_behind(sent) - catchup.KEEP_MS) <= 64
    assert c.shift >= 2400 + transcode_ms - 50 - catchup.KEEP_MS - 64


def test_a_backfill_sent_over_a_while_counts_from_when_the_player_started() -> None:
    """The backfill comes out of the transcoder in batches over 0.7 s: the SDK starts only when they span 2 s,
    and plays from the first record from then on. (The catch-up before this one counted the player's time from
    the first batch: it left the player 0.28 s further behind here.)"""
    recs = stream(20)
    c, sent = catchup.CatchUp(), []
    for i in range(7):  # 2.4 s of the past and what piled up, in 7 batches 100 ms apart
        batch = [rec for t, rec in recs if i * 3100 / 7 < t <= (i + 1) * 3100 / 7 or (i == 0 and t == 0)]
        send(c, batch, i * 100, sent)
    live_after(c, recs, 3100, 700, sent)
    assert abs(played_behind(sent) - catchup.KEEP_MS) <= 64


def test_a_late_batch_is_not_made_up_twice() -> None:
    """Once caught up, a short stall of the feed (0.25 s without records, then all of them at once) leaves the
    player where it was: it had enough to play through it, and nothing more is left out."""
    recs = stream(20)
    c, sent = run([r for r in recs if r[0] <= 12000])
    dropped = c.dropped
    send(c, [rec for t, rec in recs if 12000 < t <= 12250], 12250, sent)
    live_after(c, recs, 12250, 12250, sent)
    assert c.dropped == dropped and abs(played_behind(sent) - catchup.KEEP_MS) <= 64


def test_what_a_player_lost_waiting_for_a_stalled_feed_is_made_up() -> None:
    """A stall longer than what the player holds (1 s without records): it plays to the end of what it has and
    waits there, 0.7 s; then the records of that second come at once. It is pulled in to KEEP_MS behind again."""
    recs = stream(20)
    c, sent = run([r for r in recs if r[0] <= 10000])
    assert abs(played_behind(sent) - catchup.KEEP_MS) <= 64
    send(c, [rec for t, rec in recs if 10000 < t <= 11000], 11000, sent)
    dropped = c.dropped
    live_after(c, recs, 11000, 11000, sent)
    assert c.dropped > dropped and abs(played_behind(sent) - catchup.KEEP_MS) <= 64
