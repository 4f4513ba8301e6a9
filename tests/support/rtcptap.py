"""Byte-level access to what an aiortc peer receives and sends, after SRTP: decrypted RTCP and RTP.

`Tap.install(pc)` wraps the pc's DTLS transports (call it right after the answer is applied, before DTLS
completes: no packet is missed). RTCP is parsed here by its own small parser (RFC 3550 §6.4, RFC 4585 §6,
draft-alvestrand-rmcat-remb), not by aiortc's, so a test checks the bytes the server really sent.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Any

NTP_EPOCH_OFFSET = 2208988800


@dataclass
class Rtcp:
    """One RTCP packet of a compound: its type and the fields a test needs."""

    pt: int
    count: int  # RC / FMT
    ssrc: int
    raw: bytes
    ntp: int = 0  # SR
    rtp_ts: int = 0  # SR
    packets: int = 0  # SR
    octets: int = 0  # SR
    blocks: list[dict[str, int]] = field(default_factory=list)  # SR/RR report blocks
    media_ssrc: int = 0  # feedback
    remb_bitrate: int | None = None
    remb_ssrcs: list[int] = field(default_factory=list)

    @property
    def ntp_seconds(self) -> float:
        """The SR's NTP time as a Unix time."""
        return (self.ntp >> 32) - NTP_EPOCH_OFFSET + (self.ntp & 0xFFFFFFFF) / 2**32


def parse_compound(data: bytes) -> list[Rtcp]:
    out = []
    pos = 0
    while pos + 4 <= len(data):
        b0, pt, length = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise ValueError(f"RTCP version {b0 >> 6}")
        end = pos + 4 * (length + 1)
        if end > len(data):
            raise ValueError("truncated RTCP")
        body = data[pos + 4:end]
        count = b0 & 0x1F
        packet = Rtcp(pt=pt, count=count, ssrc=struct.unpack_from("!I", body, 0)[0] if len(body) >= 4 else 0,
                      raw=data[pos:end])
        blocks_at = None
        if pt == 200:
            _, packet.ntp, packet.rtp_ts, packet.packets, packet.octets = struct.unpack_from("!IQIII", body, 0)
            blocks_at = 24
        elif pt == 201:
            blocks_at = 4
        elif pt in (205, 206):
            packet.media_ssrc = struct.unpack_from("!I", body, 4)[0]
            fci = body[8:]
            if pt == 206 and count == 15 and fci[:4] == b"REMB":
                n, b1, b2, b3 = fci[4], fci[5], fci[6], fci[7]
                exp, mantissa = b1 >> 2, ((b1 & 3) << 16) | (b2 << 8) | b3
                packet.remb_bitrate = mantissa << exp
                packet.remb_ssrcs = [struct.unpack_from("!I", fci, 8 + 4 * i)[0] for i in range(n)]
        if blocks_at is not None:
            for i in range(count):
                ssrc, frac, lost3, highest, jitter, lsr, dlsr = struct.unpack_from("!IB3sIIII", body,
                                                                                   blocks_at + 24 * i)
                packet.blocks.append({"ssrc": ssrc, "fraction_lost": frac, "lost": int.from_bytes(lost3, "big"),
                                      "highest": highest, "jitter": jitter, "lsr": lsr, "dlsr": dlsr})
        out.append(packet)
        pos = end
    return out


@dataclass
class RtpSeen:
    t: float  # time.time()
    ssrc: int
    seq: int
    ts: int
    pt: int
    payload: bytes


def rtp_fields(data: bytes) -> tuple[int, int, int, int, bytes]:
    """(ssrc, seq, ts, pt, payload without header, extension or padding) of a plain RTP packet."""
    b0 = data[0]
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    end = len(data) - (data[-1] if b0 & 0x20 else 0)
    seq, ts, ssrc = struct.unpack_from("!HII", data, 2)
    return ssrc, seq, ts, data[1] & 0x7F, data[pos:end]


class Tap:
    def __init__(self) -> None:
        self.rtcp_in: list[tuple[float, Rtcp]] = []
        self.rtcp_out: list[tuple[float, Rtcp]] = []
        self.rtp_in: list[RtpSeen] = []
        self.rtp_out: list[RtpSeen] = []
        self._hooked: set[int] = set()

    @classmethod
    def install(cls, pc: Any) -> Tap:
        tap = cls()
        for transceiver in pc.getTransceivers():
            for transport in (transceiver.sender.transport, transceiver.receiver.transport):
                if transport is not None and id(transport) not in tap._hooked:
                    tap._hooked.add(id(transport))
                    tap._wrap(transport)
        return tap

    def _wrap(self, transport: Any) -> None:
        rtcp_in, rtp_in, send = transport._handle_rtcp_data, transport._handle_rtp_data, transport._send_rtp

        async def handle_rtcp(data: bytes) -> None:
            now = time.time()
            self.rtcp_in += [(now, p) for p in parse_compound(data)]
            await rtcp_in(data)

        async def handle_rtp(data: bytes, arrival_time_ms: int) -> None:
            self.rtp_in.append(RtpSeen(time.time(), *rtp_fields(data)))
            await rtp_in(data, arrival_time_ms)

        async def send_rtp(data: bytes) -> None:
            now = time.time()
            if 192 <= data[1] <= 223:
                self.rtcp_out += [(now, p) for p in parse_compound(data)]
            else:
                self.rtp_out.append(RtpSeen(now, *rtp_fields(data)))
            await send(data)

        transport._handle_rtcp_data, transport._handle_rtp_data, transport._send_rtp = handle_rtcp, handle_rtp, send_rtp

    def received(self, pt: int) -> list[tuple[float, Rtcp]]:
        return [(t, p) for t, p in self.rtcp_in if p.pt == pt]

    def sent(self, pt: int) -> list[tuple[float, Rtcp]]:
        return [(t, p) for t, p in self.rtcp_out if p.pt == pt]
