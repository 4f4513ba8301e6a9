"""Recording without a network: the depacketizer (media/depacketize.py), file names (streams/recording.py)
and the recorder's worker (media/recorder.py) fed by real Producers with aiortc-encoded RTP."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections import deque
from types import SimpleNamespace

import av
import pytest

from tests.support.media import pattern_present, read_frame_counter
from tests.support.recfile import read_recording
from tests.support.rtpgen import (
    AUDIO_SSRC,
    PT,
    VIDEO_SSRC,
    EncodedFrame,
    FakePublisher,
    encode_audio,
    encode_video,
    ntp,
    packetize,
    rtp,
)
from webcall.media.depacketize import (
    START_CODE,
    H264Assembler,
    OpusAssembler,
    ReorderBuffer,
    Vp8Assembler,
)
from webcall.media.recorder import Recorder, RecorderOptions, TrackSink, opus_samples
from webcall.streams.recording import (
    MAX_NAME,
    Recording,
    RecordSettings,
    is_record_file_name,
    login_of,
    record_file_name,
    render,
    sanitize,
)

ASSEMBLERS = {"VP8": Vp8Assembler, "H264": H264Assembler}
_cache: dict = {}


def video(codec: str, count: int = 24, keyframes: frozenset[int] = frozenset({0, 12})) -> list[EncodedFrame]:
    key = (codec, count, keyframes)
    if key not in _cache:
        _cache[key] = encode_video(codec, count, keyframes=keyframes)
    return _cache[key]


def assemble(codec: str, packets: list[bytes], wait: float = 0.5):
    """Everything through a ReorderBuffer (one pop at the end) and an assembler."""
    reorder, assembler = ReorderBuffer(wait), ASSEMBLERS[codec]()
    for packet in packets:
        reorder.push(packet, 0.0)
    frames = []
    for packet, arrival, lost in reorder.pop(10.0, flush=True):
        frames += assembler.push(packet, arrival, lost)
    frames += assembler.flush()
    return frames, assembler, reorder


def decode(codec: str, frames) -> list[tuple[int | None, bool]]:
    decoder = av.CodecContext.create(codec.lower(), "r")
    out = []
    for frame in frames:
        for picture in decoder.decode(av.Packet(frame.data)):
            out.append((read_frame_counter(picture), pattern_present(picture)))
    return out


# --- depacketizing --------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_frames_are_reassembled_and_decode(codec: str) -> None:
    encoded = video(codec)
    packets = [p for _, p in packetize(encoded, PT[codec], VIDEO_SSRC, seq0=65530)]  # wraps around
    frames, assembler, reorder = assemble(codec, packets)
    assert len(frames) == len(encoded) and reorder.lost == 0 and assembler.dropped == 0
    assert [f.keyframe for f in frames] == [e.keyframe for e in encoded]
    assert frames[0].size == (320, 240)
    assert [f.ts for f in frames] == [e.ts for e in encoded]
    if codec == "H264":
        assert all(f.data.startswith(START_CODE) for f in frames)
    assert decode(codec, frames) == [(i, True) for i in range(len(encoded))]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_loss_drops_frames_until_the_next_keyframe(codec: str) -> None:
    encoded = video(codec)
    tagged = packetize(encoded, PT[codec], VIDEO_SSRC)
    of_5 = [i for i, (index, _) in enumerate(tagged) if index == 5]
    lost = of_5[len(of_5) // 2]  # a middle packet of frame 5, or all of it (small VP8 P-frames: one packet)
    frames, assembler, reorder = assemble(codec, [p for i, (_, p) in enumerate(tagged) if i != lost])
    assert reorder.lost == 1
    counters = [c for c, _ in decode(codec, frames)]
    assert counters == list(range(5)) + list(range(12, len(encoded)))  # never a broken frame
    assert assembler.dropped == (7 if len(of_5) > 1 else 6) and assembler.keyframes == 2


def test_loss_asks_for_a_keyframe_once() -> None:
    encoded = video("VP8")
    tagged = packetize(encoded, PT["VP8"], VIDEO_SSRC)
    reorder, assembler = ReorderBuffer(0.5), Vp8Assembler()
    first_of_6 = next(i for i, (index, _) in enumerate(tagged) if index == 6)
    requests = 0
    for i, (_, packet) in enumerate(tagged[:first_of_6 + 8]):
        if i != first_of_6:
            reorder.push(packet, 0.0)
        for p, a, lost in reorder.pop(1.0):
            assembler.push(p, a, lost)
        if assembler.want_keyframe:
            requests += 1
            assembler.want_keyframe = False
    assert requests == 1 and assembler.need_keyframe


def test_reordered_and_retransmitted_packets_are_recovered() -> None:
    encoded = video("VP8")
    packets = [p for _, p in packetize(encoded, PT["VP8"], VIDEO_SSRC, seq0=100)]
    rng = random.Random(3)
    late = packets[10]  # "NACKed": comes back 0.3 s later, before the deadline
    shuffled = [p for p in packets if p is not late]
    for i in range(0, len(shuffled) - 4, 4):
        window = shuffled[i : i + 4]
        rng.shuffle(window)
        shuffled[i : i + 4] = window
    reorder, assembler = ReorderBuffer(0.5), Vp8Assembler()
    frames, now = [], 0.0
    for i, packet in enumerate(shuffled):
        now = i * 0.005
        reorder.push(packet, now)
        if i == 30:
            reorder.push(late, now)
        for p, a, lost in reorder.pop(now):
            frames += assembler.push(p, a, lost)
    for p, a, lost in reorder.pop(now + 1.0):
        frames += assembler.push(p, a, lost)
    assert reorder.lost == 0 and len(frames) == len(encoded)
    assert [c for c, _ in decode("VP8", frames)] == list(range(len(encoded)))


def test_a_hole_is_given_up_after_the_wait_and_its_retransmission_is_late() -> None:
    encoded = video("VP8")
    packets = [p for _, p in packetize(encoded, PT["VP8"], VIDEO_SSRC)]
    reorder = ReorderBuffer(0.5)
    for p in packets[:3] + packets[4:8]:
        reorder.push(p, 1.0)
    assert len(reorder.pop(1.4)) == 3  # waiting for packet 3
    out = reorder.pop(1.6)
    assert len(out) == 4 and out[0][2] is True and not any(lost for _, _, lost in out[1:])
    reorder.push(packets[3], 1.7)
    assert reorder.late == 1 and reorder.lost == 1 and reorder.pop(2.0) == []


def _without_parameter_sets(frame: EncodedFrame) -> EncodedFrame:
    """The same IDR access unit with its SPS and PPS taken out (of their STAP-A, or as packets)."""
    payloads = []
    for payload in frame.payloads:
        if payload[0] & 0x1F == 24:  # STAP-A: rebuild it without types 7 and 8
            nals, pos = [], 1
            while pos < len(payload):
                size = int.from_bytes(payload[pos : pos + 2], "big")
                nals.append(payload[pos + 2 : pos + 2 + size])
                pos += 2 + size
            kept = [n for n in nals if n[0] & 0x1F not in (7, 8)]
            assert len(kept) < len(nals)
            if len(kept) == 1:
                payloads.append(kept[0])
            elif kept:
                payloads.append(bytes([payload[0]]) + b"".join(len(n).to_bytes(2, "big") + n for n in kept))
        elif payload[0] & 0x1F not in (7, 8):
            payloads.append(payload)
    return EncodedFrame(frame.counter, frame.ts, payloads, True)


def test_h264_idr_without_parameter_sets_gets_the_latest_ones() -> None:
    encoded = list(video("H264"))
    encoded[12] = _without_parameter_sets(encoded[12])
    frames, assembler, _ = assemble("H264", [p for _, p in packetize(encoded, PT["H264"], VIDEO_SSRC)])
    assert len(frames) == len(encoded) and frames[12].keyframe
    assert frames[12].data[4] & 0x1F == 7  # SPS first, then PPS, then the IDR
    # A decoder that starts at that keyframe can decode everything from there.
    assert [c for c, _ in decode("H264", frames[12:])] == list(range(12, len(encoded)))

    encoded[0] = _without_parameter_sets(encoded[0])  # no parameter sets ever: nothing is decodable
    frames, _, _ = assemble("H264", [p for _, p in packetize(encoded[:12], PT["H264"], VIDEO_SSRC)])
    assert frames == []


def test_h264_frame_missing_its_first_fragment_is_dropped() -> None:
    encoded = video("H264")
    tagged = packetize(encoded, PT["H264"], VIDEO_SSRC)
    # Starting mid-stream inside an IDR (as a REST-started recording may): its first packets never came.
    first = [p for index, p in tagged if index == 0][2:]
    frames, assembler, _ = assemble("H264", first + [p for index, p in tagged if 0 < index < 12])
    assert frames == [] and assembler.need_keyframe


def test_vp8_frame_without_its_start_is_dropped() -> None:
    encoded = video("VP8")
    tagged = packetize(encoded, PT["VP8"], VIDEO_SSRC)
    frames, _, _ = assemble("VP8", [p for index, p in tagged if index == 0][1:])
    assert frames == []


def test_opus_loss_is_only_a_gap() -> None:
    assembler = OpusAssembler()
    frames = []
    for i, frame in enumerate(encode_audio(10)):
        if i in (3, 4):
            continue
        frames += assembler.push(rtp(i, frame.ts, frame.payloads[0], True, PT["opus"], AUDIO_SSRC), 0.0, i == 5)
    frames += assembler.push(rtp(11, 20000, b"", False, PT["opus"], AUDIO_SSRC), 0.0, False)  # empty: skipped
    assert [f.ts for f in frames] == [960 * i for i in (0, 1, 2, 5, 6, 7, 8, 9)]
    assert all(opus_samples(f.data) == 960 for f in frames)


def test_opus_samples_from_the_toc() -> None:
    assert opus_samples(bytes([0xF8])) == 960  # CELT FB 20 ms, one frame
    assert opus_samples(bytes([(1 << 3) | 1])) == 1920  # SILK NB 20 ms, two frames
    assert opus_samples(bytes([(18 << 3) | 3, 3])) == 3 * 480  # CELT 10 ms, three frames (code 3)


def test_sink_queue_is_bounded_and_counts_what_it_drops() -> None:
    queue: deque = deque()
    sink = TrackSink(queue, 1, 3)
    for i in range(5):
        sink.call(bytes([i]))
    assert len(queue) == 3 and sink.dropped == 2 and [q[0] for q in queue] == [1, 1, 1]


# --- file names -----------------------------------------------------------------------------------

def _stub_publication(login: str | None = "alice"):
    session = SimpleNamespace(id="/127.0.0.1:5000/127.0.0.1:8080/abcd",
                              connection={"custom": {"login": login}} if login is not None else {})
    return SimpleNamespace(name="my stream", media_session_id="90e14ad0-fdb2-11e8", session_id=session.id,
                           login=login_of(session.connection), audio_codec="opus", video_codec="H264", router=None,
                           label="test", closed=False)


async def test_every_placeholder_is_rendered() -> None:
    template = "{streamName}|{mediaSessionId}|{login}|{sessionId}|{audioCodec}|{videoCodec}|{startTime}|" \
               "{startTimeMillis}|{endTime}|{endTimeMillis}|{duration}|{unknown}"
    recording = Recording(_stub_publication(), RecordSettings(), template)  # type: ignore[arg-type]
    recording.started_at = 1_700_000_000.25
    values = recording._values(1_700_000_010.75)
    parts = render(template, values).split("|")
    session_id = base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)).decode()
    assert parts[:3] == ["my stream", "90e14ad0-fdb2-11e8", "alice"] and session_id.startswith("/127.0.0.1:5000/")
    assert parts[4:] == ["opus", "H264", "20231114-221320", "1700000000250", "20231114-221330", "1700000010750",
                         "10500", "{unknown}"]
    assert record_file_name(template, values, "mp4").endswith(".mp4")
    live = recording._values(None)
    assert (live["endTime"], live["duration"]) == ("live", "live") and recording.ends_late
    assert Recording(_stub_publication(), RecordSettings()).ends_late is False  # type: ignore[arg-type]


def test_file_names_are_sanitized() -> None:
    values = {"streamName": "../../etc/passwd", "login": "..", "mediaSessionId": "a/b\\c\x00d"}
    for template in ("{streamName}", "/{login}/x", "{mediaSessionId}", "..", "", "{login}", "\u00e9t\u00e9 ✓"):
        name = record_file_name(template, values, "webm")
        assert "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
        assert is_record_file_name(name), name
    assert record_file_name("{streamName}", values, "webm") == "etc_passwd.webm"
    assert record_file_name("stream-{mediaSessionId}-{login}", {"mediaSessionId": "id", "login": ""}, "mp4") \
        == "stream-id.mp4"
    long = record_file_name("x" * 1000, {}, "webm", "-12")
    assert len(long) == MAX_NAME and long.endswith("x-12.webm")
    assert sanitize("") == "stream" and sanitize("...") == "stream"


def test_only_recorder_names_are_served() -> None:
    assert is_record_file_name("stream-abc-alice.webm") and is_record_file_name("a.mp4")
    for bad in ("../x.webm", ".x.webm", "x.txt", "x", "a b.mp4", "x" * 300 + ".mp4", "sub/x.mp4", "-x.mkv"):
        assert not is_record_file_name(bad), bad


def test_login_and_container_choice() -> None:
    assert login_of({"custom": {"login": "bob"}, "sipLogin": "sip"}) == "bob"
    assert login_of({"sipLogin": "sip"}) == "sip" and login_of(None) == "" and login_of({"custom": "x"}) == ""
    settings = RecordSettings()
    assert (settings.container("VP8"), settings.container("H264"), settings.container(None)) == ("webm", "mp4", "webm")
    mkv = RecordSettings(formats="vp8-mkv, h264-mkv")
    assert (mkv.container("VP8"), mkv.container("H264")) == ("mkv", "mkv")
    assert RecordSettings(formats="h264-webm").container("H264") == "mp4"  # WebM cannot hold H264


# --- the recorder ---------------------------------------------------------------------------------

async def _record(path: str, codec: str = "VP8", container: str = "webm", audio: str = "opus",
                  video_frames: int = 60, audio_delay: float = 0.2, drop: int | None = None,
                  sender_reports: bool = True):
    """Feed a FakePublisher's producers with `video_frames` of video and 20 ms Opus packets whose capture
    starts `audio_delay` s after the video's (as the publisher's sender reports say); record; wait."""
    pub = FakePublisher(codec)
    encoded = encode_video(codec, video_frames, keyframes=frozenset({0, video_frames // 2}), ts0=123_456)
    audio_frames = encode_audio(int(video_frames / 30 / 0.02), ts0=987_654)
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    recorder = Recorder(path, [pub.routers["video"], pub.routers["audio"]],
                        RecorderOptions(container=container, audio=audio, sr_wait=0.5), loop,
                        on_done=done.set_result, label="unit")
    recorder.start()
    wall, now = 1_000_000.0, time.monotonic()
    if sender_reports:
        pub.producers["video"].on_sender_report(ntp(wall), encoded[0].ts, now)
        pub.producers["audio"].on_sender_report(ntp(wall + audio_delay), audio_frames[0].ts, now)
    items = [(f.counter / 30, "video", p) for f, p in ((encoded[i], p) for i, p in
                                                       packetize(encoded, PT[codec], VIDEO_SSRC))]
    items += [(audio_delay + audio_frames[i].counter * 0.02, "audio", p)
              for i, p in packetize(audio_frames, PT["opus"], AUDIO_SSRC)]
    items.sort(key=lambda item: item[0])
    for n, (_, kind, packet) in enumerate(items):
        if n != drop:
            pub.producers[kind].receive(packet, now)
    await asyncio.sleep(0.1)
    recorder.stop()
    await asyncio.wait_for(done, 10)
    return recorder, pub, encoded


@pytest.mark.parametrize("codec,container,audio", [("VP8", "webm", "opus"), ("H264", "mp4", "opus"),
                                                   ("H264", "mp4", "aac"), ("VP8", "mkv", "opus")])
async def test_recorder_writes_a_file_aligned_by_sender_reports(tmp_path, codec, container, audio) -> None:
    path = str(tmp_path / f"r.{container}")
    recorder, _, encoded = await _record(path, codec, container, audio)
    assert recorder.state == "done" and recorder.mode == "sr", recorder.stats()
    rec = read_recording(path)
    assert (rec.video_codec, rec.audio_codec) == (codec.lower(), audio)
    assert [c for c in rec.counters] == list(range(len(encoded))) and all(rec.intact)
    assert abs(rec.av_offset - 0.2) < 0.03, rec.av_offset  # from the sender reports, not the arrival times
    assert rec.audio_rms > 0.05 and abs(rec.media_duration - 2.2) < 0.1, rec.media_duration
    assert recorder.cpu_seconds > 0 and recorder.stats()["tracks"]["video"]["frames"] == len(encoded)


async def test_recorder_without_sender_reports_uses_arrival_times(tmp_path) -> None:
    path = str(tmp_path / "r.webm")
    recorder, _, encoded = await _record(path, sender_reports=False, audio_delay=0.0)
    assert recorder.state == "done" and recorder.mode == "arrival"
    assert read_recording(path).counters == list(range(len(encoded)))


async def test_recorder_loss_requests_a_keyframe_and_skips_to_it(tmp_path) -> None:
    path = str(tmp_path / "r.webm")
    recorder, pub, encoded = await _record(path, drop=40)
    rec = read_recording(path)
    assert recorder.stats()["tracks"]["video"]["packetsLost"] == 1
    assert rec.counters_in_order() and all(rec.intact) and len(rec.counters) < len(encoded)
    assert 30 in rec.counters  # the second keyframe restarted the chain
    await asyncio.sleep(0)  # the request was handed to the event loop
    assert pub.keyframe_requests >= 1


async def test_disk_full_stops_the_recording_not_the_stream(tmp_path) -> None:
    """Writes to /dev/full fail with ENOSPC, like a full disk."""
    path = tmp_path / "full.webm"
    path.symlink_to("/dev/full")
    pub = FakePublisher("VP8")
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    routers = [pub.routers["video"], pub.routers["audio"]]
    recorder = Recorder(str(path), routers, RecorderOptions(sr_wait=0.0, fragment=0.1), loop,
                        on_done=done.set_result, label="full")
    recorder.start()
    now = time.monotonic()
    encoded = encode_video("VP8", 30, keyframes=frozenset({0}))
    audio_frames = encode_audio(50)
    for frame_index, packet in packetize(encoded, PT["VP8"], VIDEO_SSRC):
        pub.producers["video"].receive(packet, now)
    for _, packet in packetize(audio_frames, PT["opus"], AUDIO_SSRC):
        pub.producers["audio"].receive(packet, now)
    await asyncio.wait_for(done, 10)
    assert recorder.state == "failed" and "No space left" in (recorder.error or ""), recorder.error
    assert all(r.readers == () for r in routers)  # the live path no longer feeds it
    pub.producers["video"].receive(rtp(len(encoded) + 5, 999, b"\x10\x00", True, PT["VP8"], VIDEO_SSRC), now)
    assert os.path.exists("/dev/full") and path.is_symlink()  # nothing but regular empty files is removed


@pytest.mark.parametrize("kind", ["audio", "video"])
async def test_single_track_publications_are_recorded(tmp_path, kind) -> None:
    pub = FakePublisher("VP8" if kind == "video" else None, audio=kind == "audio")
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    path = str(tmp_path / "one.webm")
    recorder = Recorder(path, list(pub.routers.values()), RecorderOptions(sr_wait=0.2), loop,
                        on_done=done.set_result, label="one")
    recorder.start()
    now = time.monotonic()
    if kind == "video":
        packets = [p for _, p in packetize(encode_video("VP8", 30), PT["VP8"], VIDEO_SSRC)]
    else:
        packets = [p for _, p in packetize(encode_audio(50), PT["opus"], AUDIO_SSRC)]
    for packet in packets:
        pub.producers[kind].receive(packet, now)
    await asyncio.sleep(0.4)
    recorder.stop()
    await asyncio.wait_for(done, 10)
    rec = read_recording(path)
    assert recorder.state == "done"
    if kind == "video":
        assert rec.audio_codec is None and rec.counters == list(range(30))
    else:
        assert rec.video_codec is None and abs(rec.audio_seconds - 1.0) < 0.05 and rec.audio_rms > 0.05
