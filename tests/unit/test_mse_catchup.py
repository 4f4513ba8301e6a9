"""An MSE player's own timeline (webcall/mse/catchup.py): untouched until the SDK has its 2 s start buffer, then
pulled in by leaving out one audio frame in DROP_EVERY, until CATCH_UP_MS is made up; every track stays strictly
increasing, keyframes and headers are never left out. Records are read back with a parser of the test's own."""

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
    recs = [(0.0, flv.avc_sequence_header(0, b"\x67\x42\xc0\x1e", b"\x68\xce")),
            (0.0, flv.aac_sequence_header(0, b"\x11\x88"))]
    recs += [(i * 1000 / 30, flv.avc_frame(int(i * 1000 / 30), [b"\x65\x01" if i % 60 == 0 else b"\x41\x01"],
                                           i % 60 == 0)) for i in range(int(seconds * 30))]
    if audio:
        frames = int(seconds * 1000 / FRAME_MS)
        recs += [(j * FRAME_MS, flv.aac_frame(int(j * FRAME_MS), b"\x21")) for j in range(frames)]
    return sorted(recs, key=lambda r: r[0])


def run(recs: list[tuple[float, bytes]]) -> tuple[catchup.CatchUp, list[tuple[float, int, int, bytes]]]:
    c = catchup.CatchUp()
    sent = []
    for t, rec in recs:
        for chunk in c.rewrite([rec], now=t / 1000):  # each record sent as it is made
            sent += [(t, tag, ts, payload) for tag, ts, payload in parse(chunk)]
    return c, sent


def test_untouched_until_the_start_span_then_pulled_in_to_the_target() -> None:
    c, sent = run(stream(20))
    early = [(t, ts) for t, tag, ts, _ in sent if t < catchup.START_SPAN_MS]
    assert early and all(abs(t - ts) < 1 for t, ts in early)  # the SDK's start buffer fills at the real pace
    assert c.done and catchup.CATCH_UP_MS <= c.shift < catchup.CATCH_UP_MS + 64
    last = sent[-1]
    assert catchup.CATCH_UP_MS - 1 <= last[0] - last[2] <= catchup.CATCH_UP_MS + 64  # the end runs that far ahead
    speed = catchup.DROP_EVERY / (catchup.DROP_EVERY - 1)
    caught = next(t for t, _, ts, _ in sent if t - ts >= catchup.CATCH_UP_MS)
    assert caught < catchup.START_SPAN_MS + catchup.CATCH_UP_MS / (1 - 1 / speed) + 200


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
    assert c.done and c.dropped == 0
    assert len([1 for _, g, _, _ in sent if g == flv.VIDEO]) == 1 + 600


def test_a_longer_join_burst_is_made_up_too() -> None:
    recs = stream(20)
    burst = [rec for t, rec in recs if t <= 3500]  # a joiner given two GOPs at once: the SDK starts 3.5 s behind
    c = catchup.CatchUp()
    c.rewrite(burst, now=0.0)
    assert abs(c.target - (3500 - catchup.KEEP_MS)) < 40
    for t, rec in recs:
        if t > 3500:
            c.rewrite([rec], now=(t - 3500) / 1000)  # then live, as made
    assert c.done and c.shift >= 3500 - catchup.KEEP_MS - 40


def test_a_backfill_sent_late_is_made_up_with_what_piled_up_meanwhile() -> None:
    """A new feed's backfill (2.4 s of the past) reaches the player only after the feed has transcoded it; the
    live records made meanwhile follow at once. The player starts from the burst's first record, so it is behind
    by the burst's span plus that transcoding time: the target counts both (records given with their send time)."""
    recs = stream(20)
    transcode_ms = 700
    c = catchup.CatchUp()
    c.rewrite([rec for t, rec in recs if t <= 2400], now=0.0)  # the burst
    c.rewrite([rec for t, rec in recs if 2400 < t <= 2400 + transcode_ms], now=0.05)  # what piled up meanwhile
    assert abs(c.target - (2400 + transcode_ms - 50 - catchup.KEEP_MS)) < 40, c.target
    for t, rec in recs:  # then live: one record as it is made, sent that much later than the first
        if t > 2400 + transcode_ms:
            c.rewrite([rec], now=(t - 2400 - transcode_ms) / 1000 + 0.05)
    assert c.done and c.shift >= 2400 + transcode_ms - 50 - catchup.KEEP_MS - 40


def test_records_sent_as_they_are_made_keep_the_base_target() -> None:
    c = catchup.CatchUp()
    for t, rec in stream(20):
        c.rewrite([rec], now=t / 1000)
    assert c.target == catchup.CATCH_UP_MS and c.done
