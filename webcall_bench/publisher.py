"""Synthetic publishers: an aiortc PeerConnection sending 640x480 VP8 (or H264) + Opus, like a browser.

The load generator measures latency by RTP header: every video packet the publisher hands to SRTP is logged
(sequence number → RTP timestamp, send time, hash of the payload). A player that decrypts one packet finds
it by its payload hash, which gives that player's sequence and timestamp offsets; after that every packet's
clear header maps back to the publisher's send time without decrypting it.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from collections import deque
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy

from webcall.media.rtp import split
from .signalling import WcsConnection, new_media_session_id, publish_request

VIDEO_CLOCK = 90_000
SEND_LOG_SECONDS = 120.0  # how long a sent packet stays findable (a replayed GOP is older than the join)


class Window:
    """The measurement window, in wall-clock seconds (the kernel's receive timestamps use the same clock)."""

    def __init__(self) -> None:
        self.t0 = math.inf
        self.t1 = math.inf

    def set(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1


# --- media ---------------------------------------------------------------------------------------
#
# The clip is encoded once, before the run, and replayed: the load generator must not spend a core on
# libvpx, and an encoder thread would fight the event loop for the GIL and blur the send times. aiortc still
# does everything else a browser's sender does: RTP packetization, SRTP, sender reports, NACK → RTX. A PLI
# makes the replay jump to the clip's keyframe, as a browser's encoder would produce one.
#
# What aiortc does not do is pace: it hands a frame's packets to the socket back to back, so a keyframe
# arrives as a burst of dozens of packets. Browsers pace their video (Chrome's paced sender: 2.5 × the target
# bitrate), and so does the bench publisher by default — `--pacing-factor 0` sends aiortc's bursts.


class Pacer:
    """A browser-like paced sender for one publisher's video: each packet leaves no earlier than the previous
    one plus its size at `rate`; up to `burst` seconds of lag are sent at once (the event loop's wake-up
    granularity), as a pacer sends in short intervals."""

    def __init__(self, rate_bps: float, burst: float = 0.002) -> None:
        self.rate = rate_bps / 8  # bytes per second
        self.burst = burst
        self._next = 0.0
        self.delayed = 0  # packets that had to wait

    async def wait(self, size: int) -> None:
        now = time.monotonic()
        start = self._next if self._next > now else now
        self._next = start + size / self.rate
        if start - now > self.burst:
            self.delayed += 1
            await asyncio.sleep(start - now)

def _synthetic_picture(index: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A moving gradient, a moving square and a band of noise (so the encoder needs its whole bitrate)."""
    buf = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    luma = buf[:height]
    luma[:] = np.add.outer(np.arange(height) // 2, (np.arange(width) + 4 * index) // 4).astype(np.uint8)
    x0 = (8 * index) % max(1, width - 64)
    luma[height // 2 - 32 : height // 2 + 32, x0 : x0 + 64] = 235
    b0, b1 = (height * 3 // 4) & ~1, (height * 7 // 8) & ~1
    cells = rng.integers(40, 200, size=((b1 - b0 + 7) // 8, (width + 7) // 8), dtype=np.uint8)
    luma[b0:b1] = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)[: b1 - b0, :width]
    return buf


def encode_video_clip(codec: str, width: int, height: int, fps: float, bitrate: int,
                      seconds: float) -> list[tuple[bytes, bool]]:
    """(encoded frame, is keyframe) for `seconds` of synthetic video: one keyframe, then inter frames (CBR)."""
    frames = max(2, round(seconds * fps))
    if codec.upper() == "VP8":
        ctx = av.CodecContext.create("libvpx", "w")
        ctx.qmin, ctx.qmax = 2, 56
        # aiortc's own VP8 settings (CBR, realtime), minus the denoiser.
        ctx.options = {"bufsize": str(bitrate), "cpu-used": "-6", "deadline": "realtime", "lag-in-frames": "0",
                       "minrate": str(bitrate), "maxrate": str(bitrate), "overshoot-pct": "15",
                       "partitions": "0", "static-thresh": "1", "undershoot-pct": "100"}
    elif codec.upper() == "H264":
        ctx = av.CodecContext.create("libx264", "w")
        ctx.profile = "Baseline"
        ctx.options = {"level": "31", "tune": "zerolatency"}  # aiortc's H264 settings
    else:
        raise ValueError(f"unsupported codec {codec}")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.bit_rate = bitrate
    ctx.framerate = fractions.Fraction(round(fps), 1)
    ctx.time_base = fractions.Fraction(1, round(fps))
    ctx.gop_size = frames + 1  # one keyframe, at the start
    ctx.thread_count = 1  # several threads are much slower than one on a small VM
    rng = np.random.default_rng(1)
    out: list[tuple[bytes, bool]] = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(_synthetic_picture(i, width, height, rng), format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(None)]
    if not out or not out[0][1]:
        raise RuntimeError("the encoded clip does not start with a keyframe")
    return out


def encode_audio_clip(bitrate: int = 32_000, seconds: float = 1.0) -> list[bytes]:
    """Opus packets (20 ms, 48 kHz stereo) of a 450 Hz tone, the rate a browser sends speech at."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.bit_rate = bitrate
    ctx.format = "s16"
    ctx.layout = "stereo"
    ctx.sample_rate = 48000
    ctx.time_base = fractions.Fraction(1, 48000)
    ctx.options = {"application": "voip"}
    n = np.arange(960)
    mono = np.round(0.3 * 32767 * np.sin(2 * math.pi * 450 * n / 48000)).astype(np.int16)
    samples = np.repeat(mono, 2).reshape(1, -1)
    out: list[bytes] = []
    for i in range(round(seconds * 50) + 4):
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        out += [bytes(p) for p in ctx.encode(frame)]
    return out[2:]  # skip the encoder's start-up packets


class _PacedClipTrack(MediaStreamTrack):
    """Replays pre-encoded packets in real time (aiortc packs av.Packet objects without re-encoding)."""

    clock_rate = VIDEO_CLOCK
    interval = 1 / 30

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self._start: float | None = None

    async def _pace(self) -> None:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self.sent * self.interval - time.time()
            if wait > 0:
                await asyncio.sleep(wait)

    def _packet(self, data: bytes) -> av.Packet:
        packet = av.Packet(data)
        packet.pts = round(self.sent * self.interval * self.clock_rate)
        packet.time_base = fractions.Fraction(1, self.clock_rate)
        self.sent += 1
        return packet


class ClipVideoTrack(_PacedClipTrack):
    kind = "video"

    def __init__(self, clip: list[tuple[bytes, bool]], fps: float) -> None:
        super().__init__()
        self.clip = clip
        self.interval = 1 / fps
        self.keyframes = [i for i, (_, key) in enumerate(clip) if key]
        self.position = 0
        self.forced_keyframes = 0
        self.sender: RTCRtpSender | None = None

    async def recv(self) -> av.Packet:
        await self._pace()
        sender = self.sender
        if sender is not None and getattr(sender, "_RTCRtpSender__force_keyframe", False):
            # A PLI/FIR reached aiortc's sender: start over from a keyframe, as an encoder would.
            sender._RTCRtpSender__force_keyframe = False
            self.position = self.keyframes[0]
            self.forced_keyframes += 1
        data, _ = self.clip[self.position]
        self.position = (self.position + 1) % len(self.clip)
        return self._packet(data)


class ClipAudioTrack(_PacedClipTrack):
    kind = "audio"
    clock_rate = 48000
    interval = 0.020

    def __init__(self, clip: list[bytes]) -> None:
        super().__init__()
        self.clip = clip

    async def recv(self) -> av.Packet:
        await self._pace()
        return self._packet(self.clip[self.sent % len(self.clip)])


def use_loopback_candidates() -> None:
    """aioice skips 127.0.0.1 when gathering; a server on loopback is only reachable from there."""
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


def strip_candidates(sdp: str) -> str:
    """The SDK sends its offer before gathering: no candidates (spec §3.1)."""
    lines = [line for line in sdp.splitlines() if not line.startswith(("a=candidate", "a=end-of-candidates"))]
    return "\r\n".join(lines) + "\r\n"


def codec_preferences(kind: str, name: str) -> list[Any]:
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = [c for c in caps if c.mimeType.lower() == f"{kind}/{name.lower()}"]
    if not wanted:
        raise ValueError(f"{kind} codec {name!r} not available in aiortc")
    return wanted + [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]


# --- what was sent -----------------------------------------------------------------------------------

class SendLog:
    """Every media packet one publisher sent: counters, and for video the send time of each sequence number.

    Two hooks feed it: `on_plain` sees the plaintext packet before aiortc protects it (for the payload hash),
    `on_wire` sees the SRTP datagram just before the sendto system call (for the send time: the header is in
    the clear). aiortc's own path between the two costs ~0.2 ms here, which is not the server's doing.
    """

    def __init__(self, window: Window) -> None:
        self.window = window
        self.video_ssrc = -1
        self.audio_ssrc = -1
        self.records: dict[int, tuple[int, float, int]] = {}  # video seq -> (rtp ts, send time, payload hash)
        self.by_hash: dict[int, int] = {}  # payload hash -> video seq
        self._hashes: dict[int, int] = {}  # video seq -> payload hash, between on_plain and on_wire
        self.audio_hashes: set[int] = set()  # payload hashes of the audio sent (a repeating clip: bounded)
        self._order: deque[tuple[float, int]] = deque()  # (send time, payload hash) for pruning
        self._highest: dict[int, int] = {}
        self.video_packets = self.audio_packets = self.video_bytes = self.audio_bytes = 0
        self.win_packets = self.win_video_packets = self.win_video_bytes = self.win_audio_bytes = 0

    def reset_window(self) -> None:
        self.win_packets = self.win_video_packets = self.win_video_bytes = self.win_audio_bytes = 0

    def on_plain(self, data: bytes) -> None:
        """A video RTP packet in plaintext, about to be protected."""
        try:
            _, ext_end, _ = split(data)
        except ValueError:
            return
        self._hashes[(data[2] << 8) | data[3]] = hash(data[ext_end:])

    def on_plain_audio(self, data: bytes) -> None:
        """An audio RTP packet in plaintext, about to be protected."""
        try:
            _, ext_end, _ = split(data)
        except ValueError:
            return
        if len(self.audio_hashes) < 100_000:
            self.audio_hashes.add(hash(data[ext_end:]))

    def on_wire(self, data: bytes, t: float) -> None:
        """An SRTP packet of ours, about to be handed to the kernel at `t`."""
        ssrc = int.from_bytes(data[8:12], "big")
        seq = (data[2] << 8) | data[3]
        highest = self._highest.get(ssrc)
        if highest is not None and not 0 < ((seq - highest) & 0xFFFF) < 0x8000:
            return  # a retransmission (aiortc resends with the same seq when RTX is off)
        self._highest[ssrc] = seq
        size = len(data)
        in_window = self.window.t0 <= t < self.window.t1
        if ssrc == self.video_ssrc:
            self.video_packets += 1
            self.video_bytes += size
            if in_window:
                self.win_packets += 1
                self.win_video_packets += 1
                self.win_video_bytes += size
            h = self._hashes.pop(seq, None)
            if h is None:
                return
            self.records[seq] = (int.from_bytes(data[4:8], "big"), t, h)
            self.by_hash[h] = seq
            self._order.append((t, h))
            horizon = t - SEND_LOG_SECONDS
            while self._order and self._order[0][0] < horizon:
                _, old = self._order.popleft()
                old_seq = self.by_hash.get(old)
                if old_seq is not None:
                    record = self.records.get(old_seq)
                    if record is None or record[2] != old or record[1] < horizon:
                        del self.by_hash[old]
        elif ssrc == self.audio_ssrc:
            self.audio_packets += 1
            self.audio_bytes += size
            if in_window:
                self.win_packets += 1
                self.win_audio_bytes += size


_WIRE_LOGS: dict[int, SendLog] = {}  # our publishers' SSRCs -> their logs


def _install_wire_hook() -> None:
    """Stamp our publishers' SRTP packets right before aioice's sendto (process-wide, idempotent)."""
    protocol = aioice.ice.StunProtocol
    if getattr(protocol.send_data, "_webcall_bench", False):
        return
    original = protocol.send_data

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        if 127 < data[0] < 192 and not 191 < data[1] < 224 and len(data) >= 12:
            log = _WIRE_LOGS.get(int.from_bytes(data[8:12], "big"))
            if log is not None:
                log.on_wire(data, time.time())
        await original(self, data, addr)

    send_data._webcall_bench = True  # type: ignore[attr-defined]
    protocol.send_data = send_data


# --- the publisher -------------------------------------------------------------------------------------

class BenchPublisher:
    def __init__(self, name: str, window: Window, video_clip: list[tuple[bytes, bool]], audio_clip: list[bytes], *,
                 codec: str = "VP8", width: int = 640, height: int = 480, fps: float = 30.0,
                 pacing_bps: float = 0.0) -> None:
        self.name = name
        self.pacer = Pacer(pacing_bps) if pacing_bps > 0 else None
        self.codec = codec
        self.video_track = ClipVideoTrack(video_clip, fps)
        self.audio_track = ClipAudioTrack(audio_clip)
        self.width, self.height, self.fps = width, height, fps
        self.log = SendLog(window)
        self.conn: WcsConnection | None = None
        self.pc: RTCPeerConnection | None = None
        self.media_session_id = new_media_session_id()
        self.status = "NEW"
        self.failed: str | None = None
        self.answer_sdp: str | None = None
        self._hooked: set[int] = set()

    async def start(self, http, url: str, timeout: float = 15.0) -> None:
        self.conn = await WcsConnection.open(http, url, timeout)
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_COMPAT))
        audio = pc.addTransceiver(self.audio_track, direction="sendonly")
        video = pc.addTransceiver(self.video_track, direction="sendonly")
        video.setCodecPreferences(codec_preferences("video", self.codec))
        self.video_track.sender = video.sender
        self.log.audio_ssrc = audio.sender._ssrc
        self.log.video_ssrc = video.sender._ssrc
        _WIRE_LOGS[self.log.audio_ssrc] = _WIRE_LOGS[self.log.video_ssrc] = self.log
        _install_wire_hook()
        offer = await pc.createOffer()
        request = publish_request(self.media_session_id, self.name, strip_candidates(offer.sdp), self.width,
                                  self.height)
        channel = self.conn.channel(self.media_session_id)

        def on_terminal(status: str, info: str | None) -> None:
            self.failed = f"{status}: {info}"

        channel.on_terminal = on_terminal
        await self.conn.send("publishStream", request)
        await pc.setLocalDescription(offer)
        await channel.wait(lambda: channel.answer is not None, timeout, "setRemoteSDP (publish)")
        self.answer_sdp = channel.answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=channel.answer, type="answer"))
        self._hook()
        await channel.wait(lambda: channel.status == "PUBLISHING", timeout, "PUBLISHING")
        self.status = "PUBLISHING"
        self._hook()  # BUNDLE may have moved a sender to another transport

    def _hook(self) -> None:
        assert self.pc is not None
        for sender in self.pc.getSenders():
            dtls = sender.transport
            if dtls is None or id(dtls) in self._hooked:
                continue
            self._hooked.add(id(dtls))
            original = dtls._send_rtp
            on_plain, on_plain_audio = self.log.on_plain, self.log.on_plain_audio
            video_ssrc = self.log.video_ssrc.to_bytes(4, "big")
            audio_ssrc = self.log.audio_ssrc.to_bytes(4, "big")
            pacer = self.pacer

            async def send_rtp(data: bytes, original=original, on_plain=on_plain, on_plain_audio=on_plain_audio,
                               video_ssrc=video_ssrc, audio_ssrc=audio_ssrc, pacer=pacer) -> None:
                if not 192 <= data[1] <= 223:  # RTP, not RTCP
                    if data[8:12] == video_ssrc:
                        on_plain(data)
                    elif data[8:12] == audio_ssrc:
                        on_plain_audio(data)
                    if pacer is not None and data[8:12] != audio_ssrc:  # video and its RTX; audio goes first
                        await pacer.wait(len(data))
                await original(data)

            dtls._send_rtp = send_rtp

    async def wait_media(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.log.video_packets < 30 or self.log.audio_packets < 10:
            if time.monotonic() > deadline:
                raise TimeoutError(f"publisher {self.name}: no media after {timeout}s "
                                   f"(video {self.log.video_packets}, audio {self.log.audio_packets})")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for ssrc in (self.log.audio_ssrc, self.log.video_ssrc):
            _WIRE_LOGS.pop(ssrc, None)
        if self.pc is not None:
            await self.pc.close()
        if self.conn is not None:
            await self.conn.close()
