"""Encoded frames → RTP packets (sans-I/O), for renditions that WebRTC players read like a publication.

H264 per RFC 6184 packetization-mode 1: a NAL unit that fits is sent alone, a larger one as FU-A fragments;
the marker bit ends each access unit. VP8 per RFC 7741: a one-byte payload descriptor (S set on the first packet
of a frame, partition 0), the frame split to fit. Packets are plain RTP (no extensions): the producer that
stores them (media/producer.py) and the players' consumers rewrite what each player needs.
"""

from __future__ import annotations

import secrets
import struct

MAX_PAYLOAD = 1180  # bytes of payload per packet: leaves room for SRTP and the players' header extensions
_HEADER = struct.Struct("!BBHII")


class RtpPacketizer:
    def __init__(self, payload_type: int, codec: str, ssrc: int | None = None) -> None:
        self.payload_type = payload_type
        self.codec = codec.upper()
        self.ssrc = ssrc if ssrc is not None else secrets.randbits(32)
        self.seq = secrets.randbits(16)
        self.ts_base = secrets.randbits(32)

    def _packet(self, payload: bytes, ts90k: int, marker: bool) -> bytes:
        header = _HEADER.pack(0x80, (0x80 if marker else 0) | self.payload_type, self.seq & 0xFFFF,
                              (self.ts_base + ts90k) & 0xFFFFFFFF, self.ssrc)
        self.seq += 1
        return header + payload

    def packetize(self, frame: bytes | list[bytes], ts90k: int) -> list[bytes]:
        """One frame: H264 as its NAL units (a list), VP8 as the frame's bytes."""
        payloads = self._h264(frame) if self.codec == "H264" else self._vp8(frame)  # type: ignore[arg-type]
        return [self._packet(p, ts90k, i == len(payloads) - 1) for i, p in enumerate(payloads)]

    @staticmethod
    def _h264(nals: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for nal in nals:
            if len(nal) <= MAX_PAYLOAD:
                out.append(nal)
                continue
            header, body = nal[0], nal[1:]
            indicator = (header & 0xE0) | 28
            step = MAX_PAYLOAD - 2
            for start in range(0, len(body), step):
                fu = header & 0x1F
                if start == 0:
                    fu |= 0x80
                if start + step >= len(body):
                    fu |= 0x40
                out.append(bytes((indicator, fu)) + body[start : start + step])
        return out

    @staticmethod
    def _vp8(frame: bytes) -> list[bytes]:
        step = MAX_PAYLOAD - 1
        return [bytes((0x10 if start == 0 else 0x00,)) + frame[start : start + step]
                for start in range(0, max(len(frame), 1), step)]
