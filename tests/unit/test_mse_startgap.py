"""An MSE player's start without a hole after its first video frame (webcall/mse/startgap.py).

The SDK's MediaSource player never seeks while it sits at time 0, so a first keyframe followed by a long pause of
the publisher's encoder would leave it waiting there for good (seen with Chrome's H264 in the browser tests: video
buffered [0, 0] and [0.458, …]). Checked on real records (mse/flv.py) against what the SDK needs: both tracks
starting together, no hole, everything else untouched."""

from __future__ import annotations

from webcall.mse import flv
from webcall.mse.startgap import FIRST_FRAME_MS, HOLD_LIMIT_MS, MAX_START_GAP_MS, StartGuard

SPS = bytes.fromhex("6742c01f95a014016c")
PPS = bytes.fromhex("68ce3c80")


def vconfig(ts: int) -> bytes:
    return flv.avc_sequence_header(ts, SPS, PPS)


def frame(ts: int, key: bool = False) -> bytes:
    return flv.avc_frame(ts, [bytes([0x65 if key else 0x41]) + bytes(20)], key)


def audio(ts: int) -> bytes:
    return flv.aac_frame(ts, bytes(10))


def records(chunks: list[bytes]) -> list[tuple[int, int, bytes]]:
    return [r for chunk in chunks for r in flv.records(chunk)]


def test_a_start_without_a_hole_goes_on_unchanged() -> None:
    guard = StartGuard()
    start = [flv.aac_sequence_header(1000, b"\x12\x10"), audio(1000), vconfig(1005) + frame(1005, key=True)]
    assert guard.rewrite(start) == []  # held until the second video frame
    later = [audio(1020), frame(1038)]
    sent = guard.rewrite(later)
    assert records(sent) == records(start + later)
    assert guard.done and guard.restamped_ms == 0
    rest = [frame(1071), audio(1040)]
    assert guard.rewrite(rest) is rest  # settled: the same list, untouched


def test_a_hole_after_the_first_frame_is_closed() -> None:
    guard = StartGuard()
    sent = guard.rewrite([vconfig(1000) + frame(1000, key=True)])
    sent += guard.rewrite([audio(t) for t in range(1000, 1460, 20)])  # 458 ms without video, audio goes on
    assert [tag for tag, _, _ in records(sent)] == []  # all held: the first frame's fate is not known yet
    sent += guard.rewrite([frame(1458), audio(1460)])
    new_start = 1458 - FIRST_FRAME_MS
    got = records(sent)
    video = [(ts, body[:2]) for tag, ts, body in got if tag == flv.VIDEO]
    assert video == [(new_start, b"\x17\x00"), (new_start, b"\x17\x01"), (1458, b"\x27\x01")]
    audio_ts = [ts for tag, ts, _ in got if tag == flv.AUDIO]
    assert audio_ts == [t for t in range(1000, 1461, 20) if t >= new_start]  # older audio left out, order kept
    assert guard.done and guard.restamped_ms == new_start - 1000
    # the payloads are the same records, only re-stamped
    assert records([frame(1000, key=True)])[0][2] == next(body for tag, ts, body in got if ts == new_start
                                                          and body[:2] == b"\x17\x01")


def test_a_gap_within_the_limit_is_left_alone() -> None:
    guard = StartGuard()
    guard.rewrite([vconfig(1000), frame(1000, key=True), audio(1000)])
    sent = guard.rewrite([frame(1000 + MAX_START_GAP_MS)])
    assert [ts for _, ts, _ in records(sent)] == [1000, 1000, 1000, 1000 + MAX_START_GAP_MS]


def test_no_second_frame_lets_everything_go_as_it_was() -> None:
    guard = StartGuard()
    held = [vconfig(1000), frame(1000, key=True)] + [audio(t) for t in range(1000, 1000 + HOLD_LIMIT_MS, 20)]
    assert guard.rewrite(held) == []
    sent = guard.rewrite([audio(1000 + HOLD_LIMIT_MS + 20)])
    assert records(sent) == records(held + [audio(1000 + HOLD_LIMIT_MS + 20)])
    assert guard.done and guard.restamped_ms == 0
