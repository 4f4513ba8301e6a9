"""Recording a publisher's tracks to a file, without re-encoding video.

The event loop's only work is `TrackSink.call`: a `deque.append` of the packet the Producer has just stored
(a reader of its track router, media/router.py), or a dropped-packet count when the bounded queue is full. Everything else runs in
one worker thread per recording (it holds the GIL for ~2% of the time of a 2 Mbit/s stream):

    queue → ReorderBuffer (waits `loss_wait` for NACKed retransmissions) → frame assembly (depacketize.py;
    drops to the next keyframe after a loss and asks for one) → timeline (RTP clocks mapped to the
    publisher's wall clock by its RTCP sender reports) → PyAV muxer (VP8 → WebM/MKV, H264 → MP4/MKV; Opus
    copied, or transcoded to AAC for MP4)

The file is written so that a crash loses little: MP4 is fragmented (a fragment every `fragment` seconds of
media; `delay_moov` so that the moov's edit lists keep a late audio start), Matroska closes a cluster
every `fragment` seconds, and every packet is flushed to the OS (`flush_packets`): a SIGKILL loses at
most the fragment in progress. A clean stop writes the trailer (MP4 `mfra`, Matroska cues and duration).

A write error (disk full, directory gone) ends the recording: `state` becomes "failed" with `error`, the
sinks are detached, and the live stream is untouched. A slow disk only makes the queue fill up; its excess
is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import av

from ..logs import q
from .depacketize import ASSEMBLERS, Frame, ReorderBuffer
from .rtp import ts_delta

if TYPE_CHECKING:
    from .producer import Producer
    from .router import TrackRouter

log = logging.getLogger("webcall.recorder")

VIDEO_TB = Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_TB = Fraction(1, AUDIO_RATE)
# OpusHead (RFC 7845 §5.1): version 1, 2 channels (RTP Opus is always signalled as stereo), no pre-skip,
# 48 kHz, no gain, mapping family 0.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, AUDIO_RATE, 0, 0)
FORMATS = {"webm": "webm", "mkv": "matroska", "mp4": "mp4"}
POLL_INTERVAL = 0.02
KEYFRAME_RETRY = 1.0  # while the chain is broken, ask again this often
PENDING_CAP = 1500  # frames held per track before the timeline starts (≈ 30 s of Opus)
MAX_SILENCE = 30.0  # longest gap filled with silence when transcoding to AAC


@dataclass
class RecorderOptions:
    container: str = "webm"  # webm | mkv | mp4
    audio: str = "opus"  # opus (copied) | aac (transcoded; MP4 or MKV only)
    fragment: float = 1.0  # seconds of media per MP4 fragment / Matroska cluster
    loss_wait: float = 0.5  # how long a hole waits for its retransmission
    sr_wait: float = 4.0  # how long to wait for every track's first sender report before using arrival times
    queue_limit: int = 4096  # packets


class TrackSink:
    """The per-track hook. `call` is a reader of the track router (media/router.py): it runs on the event loop
    for every stored packet, so it is a closure (≈0.17 µs; a `__call__` method costs three times that) that only
    appends (track index, arrival time, packet) to the recorder's queue, or counts a drop when it is full."""

    __slots__ = ("call", "_dropped")

    def __init__(self, queue: deque, index: int, limit: int) -> None:
        dropped = self._dropped = [0]
        append, now = queue.append, time.monotonic

        def call(packet: bytes, keyframe: bool = False) -> None:
            if len(queue) < limit:
                append((index, now(), packet))
            else:
                dropped[0] += 1

        self.call = call

    @property
    def dropped(self) -> int:
        return self._dropped[0]


def opus_samples(data: bytes) -> int:
    """Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 §3.1)."""
    toc = data[0]
    config = toc >> 3
    if config < 12:
        size = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:
        size = (480, 960)[config & 1]
    else:
        size = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    count = 1 if code == 0 else 2 if code < 3 else (data[1] & 0x3F if len(data) > 1 else 1)
    return size * count


class MediaWriter:
    """PyAV muxing of pre-encoded frames; timestamps in 1/90000 (video) and 1/48000 (audio)."""

    def __init__(self, path: str, container: str, video: tuple[str, int, int] | None, audio: str | None,
                 fragment: float) -> None:
        fmt = FORMATS[container]
        options = {"flush_packets": "1", "max_interleave_delta": str(int(max(fragment, 0.5) * 2_000_000))}
        if fmt == "mp4":
            options.update(movflags="empty_moov+default_base_moof+delay_moov", frag_duration=str(int(fragment * 1_000_000)))
        else:
            options["cluster_time_limit"] = str(int(fragment * 1000))
        self.container = av.open(path, "w", format=fmt, container_options=options)
        self.video = self.audio = None
        self._decoder = None
        self._aac_next: int | None = None
        self.video_frames = self.audio_frames = 0
        self.bytes = 0
        try:
            if video is not None:
                codec, width, height = video
                self.video = self.container.add_mux_stream(codec.lower(), width=width, height=height)
                self.video.time_base = VIDEO_TB
            if audio == "opus":
                self.audio = self.container.add_stream("libopus", rate=AUDIO_RATE)
                self.audio.codec_context.open()  # opened only to give the stream its parameters...
                self.audio.codec_context.extradata = OPUS_HEAD  # ...and our own header (no pre-skip)
            elif audio == "aac":
                self.audio = self.container.add_stream("aac", rate=AUDIO_RATE)
                self.audio.codec_context.bit_rate = 128_000
                self._decoder = av.CodecContext.create("opus", "r")
                self._decoder.extradata = OPUS_HEAD
        except BaseException:
            self.container.close()
            raise

    def write_video(self, data: bytes, pts: int, keyframe: bool, duration: int) -> None:
        packet = av.Packet(data)
        packet.stream = self.video
        packet.time_base = VIDEO_TB
        packet.pts = packet.dts = pts
        packet.duration = duration
        packet.is_keyframe = keyframe
        self.container.mux_one(packet)
        self.video_frames += 1
        self.bytes += len(data)

    def write_audio(self, data: bytes, pts: int) -> None:
        packet = av.Packet(data)
        packet.time_base = AUDIO_TB
        packet.pts = packet.dts = pts
        packet.duration = opus_samples(data)
        self.bytes += len(data)
        self.audio_frames += 1
        if self._decoder is None:
            packet.stream = self.audio
            self.container.mux_one(packet)
            return
        for frame in self._decoder.decode(packet):  # Opus → PCM → AAC, on one continuous timeline
            if self._aac_next is None:
                self._aac_next = pts
            gap = pts - self._aac_next
            if 0 < gap <= MAX_SILENCE * AUDIO_RATE:
                self._encode(self._silence(frame, gap))
            elif gap > MAX_SILENCE * AUDIO_RATE:
                self._aac_next = pts
            frame.pts = self._aac_next
            frame.time_base = AUDIO_TB
            self._encode(frame)
            pts += frame.samples

    def _silence(self, like: av.AudioFrame, samples: int) -> av.AudioFrame:
        frame = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
        frame.sample_rate = AUDIO_RATE
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = self._aac_next
        frame.time_base = AUDIO_TB
        return frame

    def _encode(self, frame: av.AudioFrame | None) -> None:
        if frame is not None:
            self._aac_next = (self._aac_next or 0) + frame.samples
        for packet in self.audio.encode(frame):
            self.container.mux_one(packet)

    def close(self) -> None:
        try:
            if self._decoder is not None and self._aac_next is not None:
                self._encode(None)  # flush the AAC encoder
        finally:
            self.container.close()


def _empty_file(path: str) -> bool:
    """A regular file of 0 bytes (never a device or anything else that merely reports size 0)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) + (ntp & 0xFFFFFFFF) / 4294967296.0


def _unwrap(ts: int, near: int) -> int:
    """The extended (64-bit) form of a 32-bit RTP timestamp, closest to `near`."""
    return near + ts_delta(ts, near)


class _Track:
    """Worker-side state of one recorded producer."""

    def __init__(self, index: int, producer: Producer, options: RecorderOptions) -> None:
        self.index = index
        self.producer = producer
        self.kind = producer.kind
        self.codec = producer.codec.name.upper()
        self.clock = producer.clock_rate
        self.reorder = ReorderBuffer(options.loss_wait)
        self.assembler = ASSEMBLERS[self.codec]()
        self.ext_ts: int | None = None
        self.pending: deque[tuple[int, Frame]] = deque()  # (extended ts, frame) not yet written
        self.sr_seen = 0.0
        self.sr_offsets: deque[float] = deque(maxlen=8)  # wall - ext_ts/clock, one per sender report
        self.arrival_offset: float | None = None  # min(arrival - ext_ts/clock): the least delayed frame
        self.last_keyframe_request = -1e9
        self.keyframe_requests = 0
        self.first_pts: int | None = None
        self.last_pts: int | None = None
        self.frame_interval = 3000

    def collect(self, now: float, final: bool) -> int:
        frames = 0
        push = self.assembler.push
        for packet, arrival, lost in self.reorder.pop(now, flush=final):
            for frame in push(packet, arrival, lost):
                self._accept(frame)
                frames += 1
        if final:
            for frame in self.assembler.flush():
                self._accept(frame)
                frames += 1
        return frames

    def _accept(self, frame: Frame) -> None:
        ext = frame.ts if self.ext_ts is None else _unwrap(frame.ts, self.ext_ts)
        self.ext_ts = ext
        offset = frame.arrival - ext / self.clock
        if self.arrival_offset is None or offset < self.arrival_offset:
            self.arrival_offset = offset
        self.pending.append((ext, frame))
        if len(self.pending) > PENDING_CAP:
            self.pending.popleft()

    def poll_sender_report(self) -> None:
        p = self.producer
        arrival = p.sr_arrival
        if not arrival or arrival == self.sr_seen or self.ext_ts is None:
            return
        ntp, rtp = p.sr_ntp, p.sr_rtp
        if p.sr_arrival != arrival:
            return  # updated while we read it: take it next time
        self.sr_seen = arrival
        self.sr_offsets.append(_ntp_seconds(ntp) - _unwrap(rtp, self.ext_ts) / self.clock)

    def offset(self, mode: str) -> float:
        # SR mappings err towards later wall times (a sender stamps the SR when it sends, after capture),
        # so the smallest recent one is the best; it still follows a slow drift of the sender's clocks.
        if mode == "sr":
            return min(self.sr_offsets)
        assert self.arrival_offset is not None
        return self.arrival_offset


class Recorder:
    """Records some producers into one file. `start()`/`stop()` on the event loop; the rest in a thread."""

    def __init__(self, path: str, routers: Sequence[TrackRouter], options: RecorderOptions,
                 loop: asyncio.AbstractEventLoop, on_done: Callable[[Recorder], None] | None = None,
                 label: str = "") -> None:
        self.path = path
        self.options = options
        self.label = label
        self.loop = loop
        self.on_done = on_done
        self.queue: deque[tuple[int, float, bytes]] = deque()
        self.routers = [r for r in routers if r.producer.codec.name.upper() in ASSEMBLERS]
        self.tracks = [_Track(i, r.producer, options) for i, r in enumerate(self.routers)]
        self.sinks = [TrackSink(self.queue, t.index, options.queue_limit) for t in self.tracks]
        self.video = next((t for t in self.tracks if t.kind == "video"), None)
        self.audio = next((t for t in self.tracks if t.kind == "audio"), None)
        self.state = "recording"  # recording → finalizing → done | failed
        self.error: str | None = None
        self.rename_to: str | None = None
        self.writer: MediaWriter | None = None
        self.mode: str | None = None  # "sr" or "arrival": how RTP time is mapped to wall time
        self.cpu_seconds = 0.0
        self.packets = 0
        self._t0 = 0.0  # wall time of file time 0 (the first video keyframe, else the first audio frame)
        self._audio_origin: tuple[int, int] | None = None  # (extended ts, pts) of the first written audio frame
        self._first_frame_at: float | None = None
        self._attached = False
        self._opened = False  # the muxer was created (the file holds, or held, a header)
        self._packets_at_start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder {label}", daemon=True)

    # --- event loop side --------------------------------------------------------------------------

    def start(self) -> None:
        for router, sink in zip(self.routers, self.sinks):
            router.add_reader(sink.call, batched=True)  # (it waits 0.5 s for retransmissions anyway)
        self._packets_at_start = sum(t.producer.packets for t in self.tracks)
        self._attached = True
        self._thread.start()

    def stop(self, rename_to: str | None = None) -> None:
        """Stop taking packets and let the worker finalize the file (and rename it to `rename_to`)."""
        self._detach()
        if self.state == "recording":
            self.rename_to = rename_to
            self.state = "finalizing"
        self._stop.set()

    def _detach(self) -> None:
        if not self._attached:
            return
        self._attached = False
        for router, sink in zip(self.routers, self.sinks):
            router.remove_reader(sink.call)

    def _keyframe_on_loop(self, producer: Producer) -> None:
        if self._attached:
            producer.request_keyframe(time.monotonic())

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def received_media(self) -> bool:
        """Packets reached the producers since the start (event loop side; the worker may not have them yet)."""
        return self.opened or sum(t.producer.packets for t in self.tracks) > self._packets_at_start

    @property
    def opened(self) -> bool:
        """The file has (or had) a header: there is something to play."""
        return self._opened

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def dropped(self) -> int:
        return sum(sink.dropped for sink in self.sinks)

    def stats(self) -> dict:
        w = self.writer
        tracks = {}
        for t in self.tracks:
            duration = (t.last_pts - t.first_pts) / (90000 if t.kind == "video" else AUDIO_RATE) \
                if t.first_pts is not None and t.last_pts is not None else 0.0
            tracks[t.kind] = {
                "codec": t.codec, "frames": t.assembler.frames, "framesDropped": t.assembler.dropped,
                "packetsLost": t.reorder.lost, "packetsLate": t.reorder.late,
                "keyframeRequests": t.keyframe_requests, "duration": round(duration, 3),
            }
        return {
            "state": self.state, "error": self.error, "packets": self.packets, "queueDropped": self.dropped,
            "bytes": w.bytes if w else 0, "videoFrames": w.video_frames if w else 0,
            "audioFrames": w.audio_frames if w else 0, "cpuSeconds": round(self.cpu_seconds, 4),
            "timeline": self.mode, "tracks": tracks,
        }

    # --- worker thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        cpu0 = time.thread_time()
        try:
            while True:
                stopping = self._stop.is_set()
                self._drain()
                final = stopping and not self.queue
                now = time.monotonic()
                for track in self.tracks:
                    if track.collect(now, final) and self._first_frame_at is None:
                        self._first_frame_at = now
                    track.poll_sender_report()  # (needs a frame: an SR is placed near the latest timestamp)
                self._schedule(now, final)
                self._request_keyframes(now)
                self.cpu_seconds = time.thread_time() - cpu0
                if final:
                    break
                self._stop.wait(POLL_INTERVAL)
            if self.writer is not None:
                self.writer.close()
            self.state = "done"
        except Exception as exc:  # noqa: BLE001 - any muxing or file error ends this recording only
            self._fail(exc)
        finally:
            self.cpu_seconds = time.thread_time() - cpu0
            self._finish_file()
            self._call_on_loop(self._done_on_loop)

    def _drain(self) -> None:
        queue, tracks = self.queue, self.tracks
        popleft = queue.popleft
        n = 0
        while queue:
            index, arrival, packet = popleft()
            tracks[index].reorder.push(packet, arrival)
            n += 1
        self.packets += n

    def _schedule(self, now: float, final: bool) -> None:
        """Decide the timeline once, then write every frame that is ready, in time order."""
        if self.mode is None:
            if not any(t.pending for t in self.tracks):
                return
            if all(t.sr_offsets for t in self.tracks):
                self.mode = "sr"
            elif final or now - (self._first_frame_at or now) >= self.options.sr_wait:
                self.mode = "arrival"
                log.info("recording timeline %s timeline=arrival reason=\"no sender reports\"", self.label)
            else:
                return
        if self.writer is None and not self._open(final):
            return
        items = []
        for track in self.tracks:
            pending = track.pending
            while pending:
                ext, frame = pending.popleft()
                items.append((self._file_time(track, ext), track.kind == "video", ext, frame))
        items.sort(key=lambda item: item[0])
        for t, is_video, ext, frame in items:
            if is_video:
                self._write_video(t, frame)
            else:
                self._write_audio(t, ext, frame)

    def _open(self, final: bool) -> bool:
        video = self.video
        if video is not None and not video.pending and not (final and self.audio and self.audio.pending):
            # Nothing starts before the first whole video keyframe (the assembler emits nothing else first).
            if self.audio is not None:
                while len(self.audio.pending) > PENDING_CAP // 2:
                    self.audio.pending.popleft()
            return False
        mode = self.mode or "arrival"
        with_video = video is not None and bool(video.pending)
        if with_video:
            ext, first = video.pending[0]
            self._t0 = ext / video.clock + video.offset(mode)
            width, height = first.size or (video.producer.width, video.producer.height)
            spec = (video.codec, width or 640, height or 480)
        else:
            audio = self.audio
            assert audio is not None
            ext, _ = audio.pending[0]
            self._t0 = ext / audio.clock + audio.offset(mode)
            spec = None
        audio_kind = None
        if self.audio is not None:
            audio_kind = "aac" if self.options.audio == "aac" and self.options.container != "webm" else "opus"
        self._opened = True
        self.writer = MediaWriter(self.path, self.options.container, spec, audio_kind, self.options.fragment)
        if not with_video and video is not None:
            self.video = None  # no keyframe ever came: an audio-only file
        log.info("recording writing %s path=%s tracks=%s timeline=%s", self.label, q(self.path),
                 "+".join(t.codec for t in self.tracks if t.kind == "audio" or with_video), mode)
        return True

    def _file_time(self, track: _Track, ext: int) -> float:
        """Seconds from file start. Audio is the master clock: once it has started, video is placed by the
        current SR mappings relative to it, so a drift between the publisher's clocks does not desync."""
        mode = self.mode or "arrival"
        if track.kind == "audio":
            if self._audio_origin is not None:
                origin_ext, origin_pts = self._audio_origin
                return (origin_pts + ext - origin_ext) / AUDIO_RATE
            return ext / track.clock + track.offset(mode) - self._t0
        wall = ext / track.clock + track.offset(mode)
        if self._audio_origin is not None and self.audio is not None:
            origin_ext, origin_pts = self._audio_origin
            audio_ext = (wall - self.audio.offset(mode)) * AUDIO_RATE  # the audio sample captured at `wall`
            return (origin_pts + audio_ext - origin_ext) / AUDIO_RATE
        return wall - self._t0

    def _write_video(self, t: float, frame: Frame) -> None:
        track = self.video
        if track is None:
            return
        pts = max(0, round(t * 90000))
        if track.last_pts is not None:
            if pts <= track.last_pts:
                pts = track.last_pts + 1
            else:
                track.frame_interval = min(pts - track.last_pts, 9000)
        if track.first_pts is None:
            track.first_pts = pts
        track.last_pts = pts
        assert self.writer is not None
        self.writer.write_video(frame.data, pts, frame.keyframe, track.frame_interval)

    def _write_audio(self, t: float, ext: int, frame: Frame) -> None:
        track = self.audio
        assert track is not None and self.writer is not None
        if self._audio_origin is None:
            if t < -0.010:
                return  # before the first video keyframe
            self._audio_origin = (ext, max(0, round(t * AUDIO_RATE)))
        origin_ext, origin_pts = self._audio_origin
        pts = origin_pts + ext - origin_ext
        if track.last_pts is not None and pts < track.last_pts:  # (for audio, last_pts is where it ends)
            return  # a duplicate or overlapping packet
        if track.first_pts is None:
            track.first_pts = pts
        track.last_pts = pts + opus_samples(frame.data)
        self.writer.write_audio(frame.data, pts)

    def _request_keyframes(self, now: float) -> None:
        track = self.video
        if track is None:
            return
        assembler = track.assembler
        if not (assembler.want_keyframe or assembler.need_keyframe):
            return
        if now - track.last_keyframe_request < (0.3 if assembler.want_keyframe else KEYFRAME_RETRY):
            return
        assembler.want_keyframe = False
        track.last_keyframe_request = now
        track.keyframe_requests += 1
        self._call_on_loop(self._keyframe_on_loop, track.producer)

    def _fail(self, exc: BaseException) -> None:
        self.state = "failed"
        self.error = f"{type(exc).__name__}: {exc}"
        log.warning("recording failed %s path=%s error=%s (the live stream is unaffected)", self.label,
                    q(self.path), q(self.error))
        self._call_on_loop(self._detach)
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()  # whatever was written up to the last fragment stays playable
            except Exception:  # noqa: BLE001
                pass

    def _finish_file(self) -> None:
        try:
            if _empty_file(self.path):
                os.unlink(self.path)  # nothing was ever written: no empty files left behind
                if self.rename_to and _empty_file(self.rename_to):
                    os.unlink(self.rename_to)
                return
            if self.rename_to and self.rename_to != self.path:
                os.replace(self.path, self.rename_to)
                self.path = self.rename_to
        except OSError as exc:
            log.warning("recording file not finished %s path=%s error=%s", self.label, q(self.path), q(exc))

    def _call_on_loop(self, callback: Callable, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: the process is exiting

    def _done_on_loop(self) -> None:
        self._detach()
        if self.on_done is not None:
            self.on_done(self)
