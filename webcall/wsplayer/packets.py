"""WSPlayer's binary packets (spec §11.2, read from the SDK's WSReceiver2.js), sans-I/O.

One packet per WebSocket frame. Byte 0: `type << 2` (1 video, 2 audio, 3 sync), bit 1 "an SSRC follows",
bit 0 "a timestamp follows", and for video bit 4 "keyframe". Then the optional u32 SSRC and u32 RTP timestamp
(big-endian), then the payload: an MPEG-1 video chunk (90 kHz clock) or G.711 µ-law bytes (8 kHz; the player
counts every audio packet as 20 ms, so each carries 160 samples). A sync packet is RTCP-SR-like:
`i32 ssrc, u32 rtp timestamp, u32 NTP seconds, u32 NTP fraction`; playback waits for one per SSRC.
"""

from __future__ import annotations

import struct

VIDEO, AUDIO, SYNC = 1, 2, 3
HAS_SSRC, HAS_TS, KEYFRAME = 0x02, 0x01, 0x10
AUDIO_SAMPLES = 160  # 20 ms at 8 kHz
_U32 = struct.Struct("!I")
_SYNC = struct.Struct("!BiIII")


def video_packet(ssrc: int, ts90k: int, payload: bytes, keyframe: bool) -> bytes:
    flags = (VIDEO << 2) | HAS_SSRC | HAS_TS | (KEYFRAME if keyframe else 0)
    return bytes((flags,)) + _U32.pack(ssrc) + _U32.pack(ts90k & 0xFFFFFFFF) + payload


def audio_packet(ssrc: int, ts8k: int, payload: bytes) -> bytes:
    return bytes(((AUDIO << 2) | HAS_SSRC | HAS_TS,)) + _U32.pack(ssrc) + _U32.pack(ts8k & 0xFFFFFFFF) + payload


def sync_packet(ssrc: int, rtp_ts: int, wall_ms: int) -> bytes:
    """The SSRC's RTP timestamp `rtp_ts` was sampled at `wall_ms` (any common clock, in ms)."""
    seconds, ms = divmod(wall_ms, 1000)
    signed = ssrc - (1 << 32) if ssrc >= 1 << 31 else ssrc
    return _SYNC.pack(SYNC << 2, signed, rtp_ts & 0xFFFFFFFF, seconds & 0xFFFFFFFF, (ms << 32) // 1000)
