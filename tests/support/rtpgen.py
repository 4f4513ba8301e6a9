"""Synthetic publisher RTP for recorder tests: aiortc's own encoders and packetizers, plain RTP headers.

`encode_video()` draws the counter pattern (tests/support/media.py) into each frame, so a recorded file
can be decoded and checked frame by frame without any network in between.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from webcall.media.producer import Producer
from webcall.media.router import TrackRouter
from webcall.protocol.sdp import Codec, Track

from .media import ToneAudioTrack, make_pattern_frame

VIDEO_SSRC, AUDIO_SSRC = 0x1000, 0x2000
PT = {"VP8": 96, "H264": 102, "opus": 111}


@dataclass
class EncodedFrame:
    counter: int
    ts: int  # RTP timestamp
    payloads: list[bytes]
    keyframe: bool


def encode_video(codec: str, count: int, *, width: int = 320, height: int = 240, fps: float = 30.0,
                 keyframes: frozenset[int] = frozenset({0}), busy: bool = True, ts0: int = 0) -> list[EncodedFrame]:
    """`count` frames of the counter pattern, encoded by aiortc ("VP8" or "H264"), keyframes where asked."""
    mime = {"VP8": "video/VP8", "H264": "video/H264"}[codec]
    params = {"packetization-mode": "1", "level-asymmetry-allowed": "1", "profile-level-id": "42e01f"} \
        if codec == "H264" else {}
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000, parameters=params))
    out = []
    for i in range(count):
        frame = make_pattern_frame(i, width, height, fps, busy)
        payloads, ts = encoder.encode(frame, force_keyframe=i in keyframes)
        out.append(EncodedFrame(i, (ts0 + ts) & 0xFFFFFFFF, list(payloads), i in keyframes))
    return out


def encode_audio(count: int, ts0: int = 0) -> list[EncodedFrame]:
    """`count` 20 ms Opus packets of the 440 Hz tone."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2))
    track = ToneAudioTrack()
    out = []
    for i in range(count):
        payloads, ts = encoder.encode(track.make_frame())
        out.append(EncodedFrame(i, (ts0 + ts) & 0xFFFFFFFF, list(payloads), True))
    return out


def vp8_keyframe_payload(n: int) -> bytes:
    """A VP8 payload that starts a keyframe: descriptor (S=1, partition 0), keyframe header (640x480), n random
    bytes."""
    return bytes([0x10, 0x50, 0x01, 0x00, 0x9D, 0x01, 0x2A, 0x80, 0x02, 0xE0, 0x01]) + os.urandom(n)


def rtp(seq: int, ts: int, payload: bytes, marker: bool, pt: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def packetize(frames: list[EncodedFrame], pt: int, ssrc: int, seq0: int = 0) -> list[tuple[int, bytes]]:
    """(frame index, packet) for every payload, marker on each frame's last packet."""
    out, seq = [], seq0
    for index, frame in enumerate(frames):
        for j, payload in enumerate(frame.payloads):
            out.append((index, rtp(seq, frame.ts, payload, j == len(frame.payloads) - 1, pt, ssrc)))
            seq += 1
    return out


def video_track(codec: str = "VP8") -> Track:
    fb = ("nack", "nack pli", "ccm fir", "goog-remb")
    return Track("1", "video", Codec(codec, PT[codec], 90000, None, "", fb), {}, VIDEO_SSRC)


def audio_track() -> Track:
    return Track("0", "audio", Codec("opus", PT["opus"], 48000, 2, "minptime=10;useinbandfec=1", ()), {}, AUDIO_SSRC)


class FakePublisher:
    """Producers (and their routers) as a PublisherEndpoint makes them, with the feedback they would send kept in lists."""

    def __init__(self, codec: str | None = "VP8", audio: bool = True) -> None:
        self.nacks: list[list[int]] = []
        self.keyframe_requests = 0
        self.producers: dict[str, Producer] = {}
        self.routers: dict[str, TrackRouter] = {}
        tracks = ([audio_track()] if audio else []) + ([video_track(codec)] if codec else [])
        for track in tracks:
            self.producers[track.kind] = Producer(
                track, send_nack=lambda p, seqs: self.nacks.append(seqs),
                send_keyframe_request=self._pli, on_keyframe=lambda p, w, h: None)
            self.routers[track.kind] = TrackRouter(self.producers[track.kind])

    def _pli(self, producer: Producer) -> None:
        self.keyframe_requests += 1


def ntp(seconds: float) -> int:
    """An NTP timestamp (RFC 3550 §4) for a wall time in seconds."""
    return int(seconds * 4294967296) & 0xFFFFFFFFFFFFFFFF


def vp8_descriptor_length(payload: bytes) -> int:
    """Length of the RFC 7741 payload descriptor in front of a VP8 packet's bitstream, parsed independently of
    webcall.media.rtp so tests can check it."""
    pos = 1
    if payload[0] & 0x80:
        x = payload[1]
        pos = 2
        if x & 0x80:
            pos += 2 if payload[pos] & 0x80 else 1
        pos += bool(x & 0x40) + bool(x & 0x30)
    return pos
