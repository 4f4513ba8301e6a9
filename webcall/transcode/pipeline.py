"""A feed: one output rendition of one publication, made in its own thread, shared by all its players.

The process that holds the publication (the single process, or the media worker of its publisher) runs one
`Feed` per (publication, output). It is a Python reader of the publication's track routers (media/router.py):
the reader only appends the packet to a bounded queue (O(1) on the forwarding path). The feed's thread puts
packets back in order, assembles frames (media/depacketize.py), and turns them into the output's chunks:

* `mse`: H264 is re-framed, never re-encoded (Annex-B access units → avcC + length-prefixed NAL units,
  webcall/mse/flv.py); VP8 is decoded and encoded to H264 (libx264, zero latency); Opus → AAC.
* `wsplayer`: any video → MPEG-1 (mpeg1video), Opus → G.711 µ-law 8 kHz in 20 ms packets, and a sync packet
  per SSRC every second (webcall/wsplayer/packets.py).
* `rtp-H264` / `rtp-VP8`: the video in the other WebRTC codec, as RTP packets for a rendition's producer
  (transcode/rendition.py), for players whose offer lacks the publisher's codec.

Every chunk is `(kind, bytes)`: "vconfig"/"aconfig" (sequence headers, sent to each player first), "key" (a
video keyframe: a player starts there), "delta" and "audio". (For WSPlayer the "configs" are the latest
sync packets: a player needs one per SSRC before it plays.) They are handed to `emit` on the event loop.

Why a thread is enough: PyAV releases the GIL around the codec calls (avcodec_send_*/receive_* and sws_scale,
see av/codec/context.py `with cython.nogil`), so encoding does not hold up the event loop; what runs in Python
here (reordering, NAL framing) is small. A queue that fills (a transcoder slower than real time) drops video to
the next keyframe, never the publisher's forwarding or other players.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av

from ..media.depacketize import ASSEMBLERS, Frame, ReorderBuffer
from ..media.producer import NTP_UNIT, Producer
from ..media.router import TrackRouter
from ..media.rtp import ts_delta
from ..mse import flv
from .rtp_out import RtpPacketizer
from ..wsplayer import packets as wsp

log = logging.getLogger("webcall.transcode")

QUEUE_LIMIT = 2048  # packets (≈ 5 s of 2 Mbit/s video with its audio)
LOSS_WAIT = 0.06  # a hole waits this long for its retransmission (live: short)
OUTPUTS = ("mse", "wsplayer", "rtp-H264", "rtp-VP8")  # rtp-*: a WebRTC rendition's video (transcode/rendition.py)
AAC_RATE = 48000
MS = Fraction(1, 1000)
ENCODER_FPS = 30  # the frame rate x264's rate control budgets for (see _H264Encoder._open)

REPLAY_MAX_SPAN = 0.3  # seconds: a current GOP longer than this is not replayed (a fresh keyframe is asked for)
# A new MSE feed starts this many seconds in the past, from what the publication's ring still holds (from the
# keyframe before that, decoded, not encoded): the SDK's MSE player appends nothing before its own queue holds more
# than 2 s of media (media-source-media-provider.js `doAppending`), so the first player need not wait for that in
# real time (mse/catchup.py then takes it back to near live). Not WSPlayer: measured, its first picture came no
# sooner with 1.2 s of the past (its player starts in about 1.5 s anyway) and, having no catch-up, it kept the
# backfill's transcoding time as added latency.
BACKFILL_SECONDS = {"mse": 2.4}
BACKFILL_REFRAMED_MAX = 4.5  # seconds: a re-framed H264 GOP (sent whole, from its keyframe) older is not backfilled

Chunk = tuple[str, bytes]


def _span_seconds(gop: list[tuple[int, bytes]]) -> float:
    first = int.from_bytes(gop[0][1][4:8], "big")
    last = int.from_bytes(gop[-1][1][4:8], "big")
    return ((last - first) & 0xFFFFFFFF) / 90000


class FeedError(Exception):
    """The publication cannot be turned into this output (a decoder or encoder failed)."""


def scaled_size(src_w: int, src_h: int, want_w: int, want_h: int) -> tuple[int, int]:
    """The picture size a player that asked for (want_w, want_h) gets (0 = free): never larger than the
    source, the source's aspect kept when one side is free, even numbers (4:2:0)."""
    if src_w <= 0 or src_h <= 0:
        return src_w, src_h
    if want_w <= 0 and want_h <= 0:
        w, h = src_w, src_h
    elif want_h <= 0:
        w = min(want_w, src_w)
        h = round(src_h * w / src_w)
    elif want_w <= 0:
        h = min(want_h, src_h)
        w = round(src_w * h / src_h)
    else:
        w, h = min(want_w, src_w), min(want_h, src_h)
    return max(2, w - w % 2), max(2, h - h % 2)


def _scaled(picture: av.VideoFrame, profile: tuple[int, int, int] | None) -> av.VideoFrame:
    if profile is None:
        return picture
    size = scaled_size(picture.width, picture.height, profile[0], profile[1])
    if size == (picture.width, picture.height):
        return picture
    return picture.reformat(width=size[0], height=size[1], format="yuv420p")


def _unwrap(ts: int, last: int | None) -> int:
    return ts if last is None else last + ts_delta(ts, last)


class _Clock:
    """RTP timestamps of one track → milliseconds on the feed's clock (its first frame at its arrival)."""

    def __init__(self, rate: int, started: float) -> None:
        self.rate, self.started = rate, started
        self.first: int | None = None
        self.base_ms = 0
        self.last: int | None = None

    def ms(self, frame: Frame) -> int:
        ext = _unwrap(frame.ts, self.last)
        self.last = ext
        if self.first is None:
            self.first = ext
            self.base_ms = max(0, int((frame.arrival - self.started) * 1000))
        return self.base_ms + (ext - self.first) * 1000 // self.rate


class _H264Framer:
    """Annex-B access units → FLV records, with a new avcC whenever the SPS or PPS change."""

    def __init__(self) -> None:
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.frames = 0

    def chunks(self, data: bytes, ts_ms: int, keyframe: bool) -> list[Chunk]:
        out: list[Chunk] = []
        nals = flv.split_annexb(data)
        sps = next((n for n in nals if n[0] & 0x1F == 7), None)
        pps = next((n for n in nals if n[0] & 0x1F == 8), None)
        if sps is not None and pps is not None:
            self.sps, self.pps = sps, pps
        if self.sps is None or self.pps is None:
            return out  # nothing decodable before the first parameter sets
        keyframe = keyframe or any(n[0] & 0x1F == 5 for n in nals)
        if keyframe:
            # The avcC again before every keyframe, stamped with its time: the SDK's demuxer cuts fragments at
            # these records, and a player that starts here must not see an old timestamp first (a jump of more
            # than 5 s resets its decoder and drops what it buffered, the avcC included).
            out.append(("vconfig", flv.avc_sequence_header(ts_ms, self.sps, self.pps)))
        out.append(("key" if keyframe else "delta", flv.avc_frame(ts_ms, nals, keyframe)))
        self.frames += 1
        return out


class _H264Encoder:
    """Decoded pictures → H264 (libx264, zero latency, constrained baseline: every MSE decodes it)."""

    def __init__(self, gop: int = 60, bit_rate: int = 0) -> None:
        self.ctx: Any = None
        self.gop = gop
        self.bit_rate = bit_rate  # 0: from the picture size
        self.force_key = False
        self.frames = 0

    def _open(self, width: int, height: int) -> None:
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = MS
        ctx.framerate = Fraction(ENCODER_FPS, 1)
        ctx.bit_rate = self.bit_rate or max(300_000, min(2_500_000, width * height * 3))  # ≈ 0.9 Mbit/s at 640x480
        ctx.gop_size = self.gop
        # The frame rate is given (30, what browsers publish by default): with zerolatency x264 ignores the
        # timestamps, and without a frame rate it took one from the 1/1000 time base, budgeting for 1000 pictures a
        # second (≈ 33 kbit/s out where 0.9 Mbit/s was set). Reading the timestamps instead (force-cfr=0) costs a
        # picture of delay (x264 holds each until the next one's timestamp gives its duration); a fixed rate gives a
        # 15 fps publisher half the bit rate (tests/unit/test_encoder_rate.py). ultrafast: a third of veryfast's
        # CPU (2.1 against 7.0 ms a 640x480 picture at 0.9 Mbit/s, measured), and a transcoder runs per stream.
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "bf": "0",
                       "threads": "1", "sliced-threads": "0"}
        ctx.open()
        self.ctx = ctx

    def encode(self, picture: av.VideoFrame, ts_ms: int) -> list[tuple[bytes, int, bool]]:
        if self.ctx is None or (self.ctx.width, self.ctx.height) != (picture.width, picture.height):
            self._open(picture.width - picture.width % 2, picture.height - picture.height % 2)
        if picture.format.name != "yuv420p" or (picture.width, picture.height) != (self.ctx.width, self.ctx.height):
            picture = picture.reformat(width=self.ctx.width, height=self.ctx.height, format="yuv420p")
        picture.pts = ts_ms
        picture.time_base = MS
        if self.force_key:
            picture.pict_type = av.video.frame.PictureType.I
            self.force_key = False
        else:
            picture.pict_type = av.video.frame.PictureType.NONE
        out = []
        for packet in self.ctx.encode(picture):
            self.frames += 1
            out.append((bytes(packet), int(packet.pts if packet.pts is not None else ts_ms), packet.is_keyframe))
        return out


class _AacEncoder:
    """Opus packets → AAC-LC 48 kHz mono frames, on a continuous timeline (gaps filled by the decoder's PLC)."""

    def __init__(self) -> None:
        self.decoder = av.CodecContext.create("opus", "r")
        self.resampler = av.AudioResampler(format="fltp", layout="mono", rate=AAC_RATE, frame_size=1024)
        enc = av.CodecContext.create("aac", "w")
        enc.sample_rate = AAC_RATE
        enc.layout = "mono"
        enc.format = "fltp"
        enc.bit_rate = 64_000
        enc.time_base = Fraction(1, AAC_RATE)
        enc.open()
        self.encoder = enc
        self.asc = bytes(enc.extradata) if enc.extradata else flv.audio_specific_config(AAC_RATE, 1)
        self.next_pts: int | None = None
        self.frames = 0

    def encode(self, data: bytes, ts_ms: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        if self.next_pts is None or abs(ts_ms * 48 - self.next_pts) > AAC_RATE // 2:
            self.next_pts = ts_ms * 48  # the start, or a long gap: re-anchor on the feed's clock
        for pcm in self.decoder.decode(av.Packet(data)):
            pcm.pts = None
            for frame in self.resampler.resample(pcm):
                frame.pts = self.next_pts
                frame.time_base = Fraction(1, AAC_RATE)
                self.next_pts += frame.samples
                for packet in self.encoder.encode(frame):
                    self.frames += 1
                    pts = packet.pts if packet.pts is not None else frame.pts
                    out.append((bytes(packet), int(pts) // 48))
        return out


class _Mpeg1Encoder:
    """Decoded pictures → MPEG-1 video (the WSPlayer's jsmpeg-like decoder), at most FPS a second, no B-frames.

    Why 25: the SDK's WSPlayer.js renders at most one picture per turn of a `setTimeout(1000 / 30)` loop
    (`requestVideoFrameCallback`), i.e. a little under 30 a second; at 30 fps its queue, and the delay, grew while
    it played (measured, README "WSPlayer's delay"); at 25 it held on an idle machine and rose far less under load.
    """

    FPS = 25

    def __init__(self, gop: int = FPS) -> None:  # a keyframe a second: where the SDK's receiver may cut to
        self.ctx: Any = None
        self.gop = gop
        self.bit_rate = 0  # 0: from the picture size
        self.force_key = False
        self.frames = 0
        self.last_pts = -1

    def _open(self, width: int, height: int) -> None:
        ctx = av.CodecContext.create("mpeg1video", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.framerate = Fraction(self.FPS, 1)
        ctx.time_base = Fraction(1, self.FPS)
        ctx.bit_rate = self.bit_rate or max(400_000, min(4_000_000, width * height * 5))  # ≈ 1.5 Mbit/s at 640x480
        ctx.gop_size = self.gop
        ctx.max_b_frames = 0
        ctx.options = {"threads": "1"}
        ctx.open()
        self.ctx = ctx

    def encode(self, picture: av.VideoFrame, ts_ms: int) -> list[tuple[bytes, int, bool]]:
        width, height = picture.width - picture.width % 2, picture.height - picture.height % 2
        if self.ctx is None or (self.ctx.width, self.ctx.height) != (width, height):
            self._open(width, height)
            self.force_key = True
        pts = ts_ms * self.FPS // 1000  # MPEG-1 wants its frame clock: one tick per picture
        if pts <= self.last_pts and not self.force_key:
            return []  # more pictures than FPS: this one is left out
        pts = max(pts, self.last_pts + 1)
        self.last_pts = pts
        picture = picture.reformat(width=width, height=height, format="yuv420p")
        picture.pts = pts
        picture.time_base = self.ctx.time_base
        picture.pict_type = av.video.frame.PictureType.I if self.force_key else av.video.frame.PictureType.NONE
        self.force_key = False
        out = []
        for packet in self.ctx.encode(picture):
            self.frames += 1
            at = packet.pts if packet.pts is not None else pts
            out.append((bytes(packet), int(at) * 1000 // self.FPS, packet.is_keyframe))
        return out


class _MulawEncoder:
    """Opus packets → G.711 µ-law 8 kHz, 160 samples (20 ms) per packet."""

    def __init__(self) -> None:
        self.decoder = av.CodecContext.create("opus", "r")
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=8000, frame_size=wsp.AUDIO_SAMPLES)
        enc = av.CodecContext.create("pcm_mulaw", "w")
        enc.sample_rate = 8000
        enc.layout = "mono"
        enc.format = "s16"
        enc.time_base = Fraction(1, 8000)
        enc.open()
        self.encoder = enc
        self.next_ts: int | None = None

    def encode(self, data: bytes, ts_ms: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        if self.next_ts is None or abs(ts_ms * 8 - self.next_ts) > 4000:
            self.next_ts = ts_ms * 8
        for pcm in self.decoder.decode(av.Packet(data)):
            pcm.pts = None
            for frame in self.resampler.resample(pcm):
                frame.pts = self.next_ts
                for packet in self.encoder.encode(frame):
                    out.append((bytes(packet), self.next_ts))
                self.next_ts += frame.samples
        return out


class _MseOutput:
    """H264 re-framed (or another codec transcoded to H264) and AAC, as FLV-style records."""

    def __init__(self, video_codec: str | None, has_audio: bool, profile: tuple[int, int, int] | None = None) -> None:
        self.framer = _H264Framer()
        # H264 is re-framed as it comes, unless a player asked for a smaller size (a size profile)
        transcode = video_codec is not None and (video_codec != "H264" or profile is not None)
        self.decoder = av.CodecContext.create("vp8" if video_codec == "VP8" else "h264", "r") if transcode else None
        self.encoder = _H264Encoder(bit_rate=profile[2] if profile else 0) if transcode else None
        self.profile = profile
        self.aac = _AacEncoder() if has_audio else None
        self.sent_aconfig = False

    def video(self, frame: Frame, ts: int) -> list[Chunk]:
        if self.decoder is None:
            return self.framer.chunks(frame.data, ts, frame.keyframe)
        assert self.encoder is not None
        out: list[Chunk] = []
        for picture in self.decoder.decode(av.Packet(frame.data)):
            picture = _scaled(picture, self.profile)
            for data, t, key in self.encoder.encode(picture, ts):
                out.extend(self.framer.chunks(data, t, key))
        return out

    def skip(self, frame: Frame) -> None:
        """A frame before the feed's start: decoded (the pictures after it need it), not sent."""
        if self.decoder is not None:
            for _ in self.decoder.decode(av.Packet(frame.data)):
                pass

    def audio(self, frame: Frame, ts: int) -> list[Chunk]:
        assert self.aac is not None
        out: list[Chunk] = []
        if not self.sent_aconfig:
            out.append(("aconfig", flv.aac_sequence_header(ts, self.aac.asc)))
            self.sent_aconfig = True
        out.extend(("audio", flv.aac_frame(t, data)) for data, t in self.aac.encode(frame.data, ts))
        return out

    def tick(self, now_ms: int) -> list[Chunk]:
        return []


class _WsPlayerOutput:
    """MPEG-1 video and µ-law audio packets, and sync packets for both SSRCs once a second."""

    SYNC_EVERY_MS = 1000
    # The SDK's receiver (WSReceiver2.js) lines audio and video up at the start: when its first audio is more than
    # 30 ms later than its first video, it drops video to a keyframe after that audio and waits another second of
    # video. So the first picture is encoded (a keyframe: the encoder opens on it) only once audio has started,
    # or after this long without audio (a publication whose audio track sends nothing).
    AUDIO_WAIT_MS = 500

    def __init__(self, video_codec: str | None, has_audio: bool, profile: tuple[int, int, int] | None = None) -> None:
        import secrets

        self.video_ssrc, self.audio_ssrc = secrets.randbits(31) | 1, secrets.randbits(31) | 2
        self.decoder = av.CodecContext.create("vp8" if video_codec == "VP8" else "h264", "r") if video_codec else None
        self.encoder = _Mpeg1Encoder() if video_codec else None
        if self.encoder is not None and profile is not None and profile[2]:
            self.encoder.bit_rate = profile[2]
        self.profile = profile
        self.mulaw = _MulawEncoder() if has_audio else None
        self.has_video, self.has_audio = video_codec is not None, has_audio
        self.last_sync = -self.SYNC_EVERY_MS
        self.audio_started = not has_audio
        self.first_picture_ms: int | None = None

    def video(self, frame: Frame, ts: int) -> list[Chunk]:
        assert self.decoder is not None and self.encoder is not None
        out: list[Chunk] = []
        for picture in self.decoder.decode(av.Packet(frame.data)):
            if not self._may_start_video(ts):
                continue  # decoded (the next picture needs it), not shown: the first one must not precede the audio
            for data, t, key in self.encoder.encode(_scaled(picture, self.profile), ts):
                out.append(("key" if key else "delta", wsp.video_packet(self.video_ssrc, t * 90, data, key)))
        return out

    def _may_start_video(self, ts: int) -> bool:
        if self.audio_started:
            return True
        if self.first_picture_ms is None:
            self.first_picture_ms = ts
        return ts - self.first_picture_ms >= self.AUDIO_WAIT_MS

    def audio(self, frame: Frame, ts: int) -> list[Chunk]:
        assert self.mulaw is not None
        out: list[Chunk] = [("audio", wsp.audio_packet(self.audio_ssrc, t, data))
                            for data, t in self.mulaw.encode(frame.data, ts)]
        self.audio_started = self.audio_started or bool(out)
        return out

    def tick(self, now_ms: int) -> list[Chunk]:
        if now_ms - self.last_sync < self.SYNC_EVERY_MS:
            return []
        self.last_sync = now_ms
        # Both clocks are the feed's own (ms since it started), so one mapping keeps audio and video in sync.
        out: list[Chunk] = []
        if self.has_video:
            out.append(("vconfig", wsp.sync_packet(self.video_ssrc, now_ms * 90, now_ms)))
        if self.has_audio:
            out.append(("aconfig", wsp.sync_packet(self.audio_ssrc, now_ms * 8, now_ms)))
        return out


class _Vp8Encoder:
    """Decoded pictures → VP8 (libvpx, real time)."""

    def __init__(self, gop: int = 60, bit_rate: int = 0) -> None:
        self.ctx: Any = None
        self.gop = gop
        self.bit_rate = bit_rate
        self.force_key = False

    def encode(self, picture: av.VideoFrame, ts_ms: int) -> list[tuple[bytes, int, bool]]:
        if self.ctx is None or (self.ctx.width, self.ctx.height) != (picture.width, picture.height):
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.width, ctx.height = picture.width, picture.height
            ctx.pix_fmt = "yuv420p"
            ctx.time_base = MS
            ctx.bit_rate = self.bit_rate or max(300_000, min(2_500_000, picture.width * picture.height * 3))
            ctx.gop_size = self.gop
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1",
                           "threads": "1"}
            ctx.open()
            self.ctx = ctx
        if picture.format.name != "yuv420p":
            picture = picture.reformat(format="yuv420p")
        picture.pts = ts_ms
        picture.time_base = MS
        picture.pict_type = av.video.frame.PictureType.I if self.force_key else av.video.frame.PictureType.NONE
        self.force_key = False
        return [(bytes(p), int(p.pts if p.pts is not None else ts_ms), p.is_keyframe) for p in self.ctx.encode(picture)]


class _RtpOutput:
    """The video in another WebRTC codec, packetized: the chunks are RTP packets for a rendition's producer."""

    def __init__(self, video_codec: str | None, target: str, payload_type: int,
                 profile: tuple[int, int, int] | None = None) -> None:
        if video_codec is None:
            raise FeedError("no video to transcode")
        self.decoder = av.CodecContext.create("vp8" if video_codec == "VP8" else "h264", "r")
        bit_rate = profile[2] if profile else 0
        self.encoder: _H264Encoder | _Vp8Encoder = (_H264Encoder(bit_rate=bit_rate) if target == "H264"
                                                    else _Vp8Encoder(bit_rate=bit_rate))
        self.target = target
        self.profile = profile  # (width, height, bit/s) a player asked for; 0 = as published
        self.packetizer = RtpPacketizer(payload_type, target)

    def video(self, frame: Frame, ts: int) -> list[Chunk]:
        out: list[Chunk] = []
        for picture in self.decoder.decode(av.Packet(frame.data)):
            picture = _scaled(picture, self.profile)
            for data, t, key in self.encoder.encode(picture, ts):
                unit: bytes | list[bytes] = data
                if self.target == "H264":
                    unit = [n for n in flv.split_annexb(data) if n[0] & 0x1F != 9]  # no access unit delimiters
                kind = "key" if key else "delta"
                out.extend((kind, packet) for packet in self.packetizer.packetize(unit, t * 90))
        return out

    def audio(self, frame: Frame, ts: int) -> list[Chunk]:
        return []  # a rendition's audio is the publication's own track

    def tick(self, now_ms: int) -> list[Chunk]:
        return []


class Feed:
    """One output of one publication: readers on its track routers, a thread, chunks out on the loop."""

    def __init__(self, tracks: dict[str, TrackRouter], output: str, loop: asyncio.AbstractEventLoop,
                 emit: Callable[[list[Chunk]], None], on_failed: Callable[[str], None], label: str = "") -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}")
        self.tracks = {kind: tracks[kind] for kind in ("video", "audio") if kind in tracks}
        self.output, self.loop, self.emit, self.on_failed, self.label = output, loop, emit, on_failed, label
        self._queue: deque[tuple[str, float, bytes]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._skip_video = False  # dropping video until the next keyframe (the queue overflowed)
        self.dropped = 0
        self.error: str | None = None
        video = self.tracks.get("video")
        self.video_codec = video.producer.codec.name.upper() if video else None
        self.transcoding_video = self.video_codec is not None and (output != "mse" or self.video_codec != "H264")
        self.payload_type = 96  # rtp-* outputs: the rendition's payload type (consumers rewrite it per player)
        self.profile: tuple[int, int, int] | None = None  # (width, height, bit/s) a player asked for, or None
        self.chunks_out = 0
        self.cpu_seconds = 0.0  # thread CPU time: the transcoder's cost
        self._readers: list[tuple[TrackRouter, Callable[[bytes, bool], None]]] = []
        self._thread = threading.Thread(target=self._run, name=f"feed-{output}", daemon=True)
        self._output: Any = None  # made in the thread (codec set-up is slow)
        self._force_key = False
        self._epoch: float | None = None  # the feed's time 0 (monotonic): its start, or its backfill's first packet
        self._encode_from: float | None = None  # video sampled before this is decoded, not encoded (backfill)
        self.backfilled = 0.0  # seconds of the past this feed started with
        self.first_chunks_ms: int | None = None  # from start() to its first chunks: what a cold start waits for
        self.video_lag_ms: int | None = None  # the latest live video frame, from its arrival to its chunks
        self.video_lag_ms_max = 0
        self._started_at = 0.0

    # --- on the event loop -------------------------------------------------------------------------------

    def set_profile(self, profile: tuple[int, int, int] | None) -> None:
        """A smaller picture (and bitrate) than published, before start(): the video is then always transcoded."""
        self.profile = profile
        if profile is not None and self.video_codec is not None:
            self.transcoding_video = True

    def start(self) -> None:
        self._started_at = time.monotonic()
        for track in self.tracks.values():
            track.producer.up_to_date()  # the rings as new as their ingest threads: the backfill ends at live
        backfill = self._backfill()
        if backfill is not None:
            self._queue.extend(backfill)
            self._epoch = min(at for _, at, _ in backfill)
        for kind, track in self.tracks.items():
            gop = track.producer.current_gop() if kind == "video" and backfill is None else None
            if gop and _span_seconds(gop) > REPLAY_MAX_SPAN:
                gop = None  # an old keyframe: starting there would put the player that far behind live
            now = time.monotonic()
            for _, packet in gop or ():  # the current GOP first: the first player starts at once
                self._queue.append((kind, now, packet))
            reader = self._reader(kind)
            track.add_reader(reader)
            self._readers.append((track, reader))
        if "video" in self.tracks and not self._queue:
            self.request_keyframe()
        self._thread.start()

    def _backfill(self) -> list[tuple[str, float, bytes]] | None:
        """The last BACKFILL_SECONDS of the publication from its producers' rings, as queue entries stamped with
        when each packet was sampled, on our monotonic clock (through the publisher's sender reports when every
        track has one, else from each track's newest packet), so that audio and video line up; video from the
        keyframe before that span. None when the rings cannot give it whole: no keyframe still held with every
        packet since, or a re-framed GOP too old to start from."""
        seconds = BACKFILL_SECONDS.get(self.output)
        video = self.tracks.get("video")
        if not seconds or video is None:
            return None
        vp = video.producer
        by_reports = all(track.producer.sr_arrival for track in self.tracks.values())
        if by_reports:
            anchor_sender, anchor_local = vp.sr_ntp / NTP_UNIT, vp.sr_arrival

            def local(producer: Producer, packet: bytes) -> float:
                sampled = producer.sender_seconds(int.from_bytes(packet[4:8], "big"))
                assert sampled is not None
                return anchor_local + (sampled - anchor_sender)
        else:
            def local(producer: Producer, packet: bytes) -> float:
                return producer.arrival_of(int.from_bytes(packet[4:8], "big"))

        gop = None
        live = key_at = 0.0
        for first in (vp.keyframe_ext_seq, vp.previous_keyframe_ext_seq):
            packets = vp.packets_from(first)
            if not packets or packets[-1][0] != vp.newest_ext_seq:
                break  # out of the ring, or a hole since: what follows could not be decoded
            gop = packets
            live, key_at = local(vp, packets[-1][1]), local(vp, packets[0][1])
            if live - key_at >= seconds:
                break
        if gop is None:
            return None
        if self.transcoding_video:
            start = max(key_at, live - seconds)
            self._encode_from = start
        elif live - key_at > BACKFILL_REFRAMED_MAX:
            return None
        else:
            start = key_at
        entries = [("video", local(vp, packet), packet) for _, packet in gop]
        audio = self.tracks.get("audio")
        if audio is not None:
            for _, packet in audio.producer.recent():
                at = local(audio.producer, packet)
                if at >= start:
                    entries.append(("audio", at, packet))
        self.backfilled = live - start
        log.info("feed backfill %s output=%s seconds=%.2f packets=%d clock=%s", self.label, self.output,
                 self.backfilled, len(entries), "sender-reports" if by_reports else "arrival")
        return entries

    def _reader(self, kind: str) -> Callable[[bytes, bool], None]:
        queue, wake, now = self._queue, self._wake, time.monotonic
        video = kind == "video"

        def reader(packet: bytes, keyframe: bool) -> None:
            if video and self._skip_video:
                if not keyframe:
                    self.dropped += 1
                    return
                self._skip_video = False
            if len(queue) >= QUEUE_LIMIT:
                self.dropped += 1
                if video:
                    self._skip_video = True
                return
            queue.append((kind, now(), packet))
            wake.set()
        return reader

    def request_keyframe(self) -> None:
        """A new player joins: the next video frame it can start from, as soon as possible."""
        self._force_key = True  # a transcoder makes one at once (picked up by the thread)
        video = self.tracks.get("video")
        if video is not None:
            video.producer.request_keyframe(time.monotonic())

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        for track, reader in self._readers:
            track.remove_reader(reader)
        self._readers.clear()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {"output": self.output, "video_codec": self.video_codec, "transcoding_video": self.transcoding_video,
                "backfilled_seconds": round(self.backfilled, 2), "first_chunks_ms": self.first_chunks_ms,
                "dropped": self.dropped, "chunks": self.chunks_out, "cpu_seconds": round(self.cpu_seconds, 3),
                "video_lag_ms": self.video_lag_ms, "video_lag_ms_max": self.video_lag_ms_max}

    # --- in the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        started_cpu = time.thread_time()
        try:
            self._loop()
        except Exception as exc:  # a decoder or encoder failure ends this feed only
            self.error = f"Transcoding failed: {type(exc).__name__}"
            log.warning("feed failed %s output=%s error=%r", self.label, self.output, exc)
            if not self._stop:
                self.loop.call_soon_threadsafe(self._failed_on_loop)
        finally:
            self.cpu_seconds = time.thread_time() - started_cpu

    def _failed_on_loop(self) -> None:
        self.close()
        self.on_failed(self.error or "Transcoding failed")

    def _loop(self) -> None:
        started = self._epoch if self._epoch is not None else time.monotonic()
        reorder = {kind: ReorderBuffer(LOSS_WAIT) for kind in self.tracks}
        assemble = {kind: ASSEMBLERS[t.producer.codec.name.upper()]() for kind, t in self.tracks.items()}
        clocks = {kind: _Clock(t.producer.codec.clock_rate, started) for kind, t in self.tracks.items()}
        output: _MseOutput | _WsPlayerOutput | _RtpOutput
        if self.output == "mse":
            output = _MseOutput(self.video_codec, "audio" in self.tracks, self.profile)
        elif self.output == "wsplayer":
            output = _WsPlayerOutput(self.video_codec, "audio" in self.tracks, self.profile)
        else:
            output = _RtpOutput(self.video_codec, self.output[4:], self.payload_type, self.profile)
        self._output = output
        encoder = getattr(output, "encoder", None)
        queue = self._queue
        cpu_mark = time.thread_time()
        while not self._stop:
            self._wake.wait(0.02)
            self._wake.clear()
            if self._force_key and encoder is not None:
                self._force_key = False
                encoder.force_key = True
            while queue:
                kind, arrival, packet = queue.popleft()
                reorder[kind].push(packet, arrival)
            now = time.monotonic()
            out: list[Chunk] = output.tick(int((now - started) * 1000))
            frames: list[tuple[float, str, Frame]] = []
            for kind, buffer in reorder.items():
                assembler = assemble[kind]
                for packet, arrival, lost in buffer.pop(now):
                    frames.extend((frame.arrival, kind, frame) for frame in assembler.push(packet, arrival, lost))
                if getattr(assembler, "want_keyframe", False):
                    assembler.want_keyframe = False
                    self.loop.call_soon_threadsafe(self.request_keyframe)
            frames.sort(key=lambda item: item[0])  # audio and video interleaved as sampled (a backfill is seconds)
            for _, kind, frame in frames:
                ts = clocks[kind].ms(frame)
                if kind == "audio":
                    out.extend(output.audio(frame, ts))
                elif self._encode_from is not None and frame.arrival < self._encode_from:
                    assert isinstance(output, _MseOutput)  # only MSE feeds are backfilled (BACKFILL_SECONDS)
                    output.skip(frame)
                else:
                    self._encode_from = None
                    out.extend(output.video(frame, ts))
                    if frame.arrival >= self._started_at:  # live, not the backfill: how far the output runs behind
                        self.video_lag_ms = round((time.monotonic() - frame.arrival) * 1000)
                        self.video_lag_ms_max = max(self.video_lag_ms_max, self.video_lag_ms)
            if out and not self._stop:
                if self.first_chunks_ms is None:
                    self.first_chunks_ms = round((time.monotonic() - self._started_at) * 1000)
                self.chunks_out += len(out)
                self.loop.call_soon_threadsafe(self.emit, out)
            mark = time.thread_time()
            self.cpu_seconds += mark - cpu_mark
            cpu_mark = mark


def start_local_feed(router: Any, output: str, emit: Callable[[list[Chunk]], None], on_failed: Callable[[str], None],
                     label: str, profile: tuple[int, int, int] | None = None) -> Feed:
    """The feed verb of a single-process server: the feed runs in a thread of this process."""
    feed = Feed(router.tracks, output, asyncio.get_running_loop(), emit, on_failed, label)
    feed.set_profile(profile)
    feed.start()
    return feed
