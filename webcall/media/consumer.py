"""A Consumer is one outgoing track of a player: the publisher's packets with this player's labels.

Each player gets its own SSRC, payload type and continuous sequence numbers and timestamps (offsets
fixed at the first forwarded packet, which for video is a keyframe start), then SRTP with its own keys.
"""

from __future__ import annotations

import secrets
import struct
import time
from typing import TYPE_CHECKING

from ..protocol.sdp import EXT_MID, Track
from .producer import Producer
from .rtp import FIXED_HEADER, ExtensionPlan, rewrite
from .srtp import SendBatch, SrtpError, SrtpSession

if TYPE_CHECKING:
    from .fanout import FanoutCore
    from .transport import WebRtcTransport

_U16 = struct.Struct("!H")


def random_ssrc() -> int:
    return secrets.randbits(32) or 1


class Consumer:
    __slots__ = (
        "producer", "transport", "kind", "mid", "ssrc", "rtx_ssrc", "payload_type", "rtx_payload_type",
        "plan", "needs_keyframe", "_sock", "seq_offset", "ts_offset", "start_ext_seq", "rtx_seq", "_next_seq",
        "_ts_base", "target", "_target_refs", "_packets", "_octets", "retransmits", "retransmit_octets", "nacks",
        "keyframe_requests", "fraction_lost", "player_lost", "tcp_waiting",
    )

    def __init__(self, producer: Producer, track: Track, transport: WebRtcTransport,
                 ssrcs: tuple[int, int | None] | None = None) -> None:
        self.producer = producer
        self.transport = transport
        self._sock = transport.port.sock
        self.kind = track.kind
        self.mid = track.mid
        self.payload_type = track.codec.payload_type
        self.rtx_payload_type = track.codec.rtx_payload_type
        if ssrcs is not None:  # announced in an answer written elsewhere (the control process)
            self.ssrc, self.rtx_ssrc = ssrcs
        else:
            self.ssrc = random_ssrc()
            self.rtx_ssrc = random_ssrc() if self.rtx_payload_type is not None else None
        mapping = {
            producer.extensions[uri]: ext_id
            for uri, ext_id in track.extensions.items()
            if uri in producer.extensions
        }
        mid_id = track.extensions.get(EXT_MID)
        self.plan = ExtensionPlan(mapping, (mid_id, track.mid.encode()) if mid_id else None)
        self.needs_keyframe = track.kind == "video"
        self.seq_offset: int | None = None
        self.ts_offset = 0
        self.start_ext_seq = 0
        self.rtx_seq = secrets.randbits(15)
        self._next_seq = secrets.randbits(15)
        self._ts_base = secrets.randbits(31)
        # Once promoted to the compiled fan-out core (fanout.py), its `struct wc_target`; the objects its
        # pointers lead to (SRTP session, address) are held in _target_refs so they outlive it.
        self.target = None
        self._target_refs: tuple = ()
        self._packets = self._octets = 0  # sent by forward() in Python; the core counts in `target`
        self.retransmits = self.nacks = self.keyframe_requests = 0
        self.retransmit_octets = 0  # payload octets of retransmissions (not in `octets`: that feeds the SR)
        self.fraction_lost = 0
        self.player_lost = 0
        self.tcp_waiting = False  # an ICE-TCP player's video dropped a packet: wait for the next keyframe

    @property
    def packets(self) -> int:
        target = self.target
        return self._packets + (target.packets if target is not None else 0)

    @property
    def octets(self) -> int:
        """Payload octets sent (not retransmissions), as the SR's octet count wants (RFC 3550 §6.4.1)."""
        target = self.target
        return self._octets + (target.octets if target is not None else 0)

    @property
    def sent_in_python(self) -> tuple[int, int]:
        """Packets and payload octets this player was sent in Python (before the core took it: a GOP replay)."""
        return self._packets, self._octets

    def forward(self, b0: int, marker: int, ext_seq: int, ts: int, tail: bytes, keyframe: bool,
                size: int, batch: SendBatch | None = None) -> None:
        """Send one packet of the producer in Python (once per packet per player — keep it lean).

        With a batch, the packet is protected in place and queued for the router's single sendmmsg.
        Once started, the router moves it to the compiled core, if there is one (`promote`).
        """
        if self.seq_offset is None:
            if self.needs_keyframe and not keyframe:
                return
            self.seq_offset = self._next_seq - ext_seq
            self.ts_offset = self._ts_base - ts
            self.start_ext_seq = ext_seq
        elif ext_seq < self.start_ext_seq:
            return  # a late packet from before this player started
        transport = self.transport
        tx = transport.tx
        if tx is None:
            return
        seq = (ext_seq + self.seq_offset) & 0xFFFF
        ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if transport.link is not None:
            self._forward_tcp(transport, tx, b0, marker, seq, ts, tail, keyframe, size)
            return
        name = transport.sockaddr
        if batch is not None and name is not None:
            length = tx.protect_in_place(FIXED_HEADER, b0, marker | self.payload_type, seq, ts, self.ssrc, tail)
            if length:
                batch.add(tx.pointer, length, name)
                self._packets += 1
                self._octets += size
            return
        try:
            tx.send_rtp(self._sock, transport.addr, FIXED_HEADER, b0, marker | self.payload_type, seq, ts, self.ssrc,
                        tail)
        except OSError:  # full socket buffer: UDP drops, and so do we
            transport.send_errors += 1
            return
        self._packets += 1
        self._octets += size

    def _forward_tcp(self, transport: WebRtcTransport, tx: SrtpSession, b0: int, marker: int, seq: int, ts: int,
                     tail: bytes, keyframe: bool, size: int) -> None:
        """An ICE-TCP player (media/tcp.py): framed on its connection; when the connection is over its write
        bound the packet is dropped, and video then resumes at the next keyframe (a decodable picture, not a
        smear of lost references), which is asked of the publisher at once."""
        link = transport.link
        if self.tcp_waiting:
            if link.congested:
                link.dropped_out += 1
                return
            if not keyframe:  # drained: ask again (the one asked for may have come while it was full)
                link.dropped_out += 1
                self.producer.request_keyframe(time.monotonic())  # at most one PLI per interval (producer.py)
                return
            self.tcp_waiting = False
        try:
            data = tx.protect(FIXED_HEADER.pack(b0, marker | self.payload_type, seq, ts, self.ssrc) + tail)
        except SrtpError:
            transport.send_errors += 1
            return
        if link.send(data):
            self._packets += 1
            self._octets += size
        elif self.kind == "video":
            self.tcp_waiting = True
            self.producer.request_keyframe(time.monotonic())

    def promote(self, core: FanoutCore) -> bool:
        """Become a `struct wc_target` of the compiled core (once started, with keys and an IPv4 address)."""
        tx, name = self.transport.tx, self.transport.sockaddr
        if self.seq_offset is None or tx is None or name is None:
            return False
        self.target = core.new_target(tx, name, self.ssrc, self.payload_type, self.seq_offset, self.ts_offset,
                                      self.start_ext_seq)
        self._target_refs = (tx, name)
        return True

    def on_nack(self, seqs: list[int]) -> None:
        """Answer a player's NACK from the producer's ring, over RTX when the player negotiated it."""
        self.nacks += 1
        if self.seq_offset is None or self.transport.link is not None:
            # ICE-TCP loses nothing on the way: what is missing is what we dropped for a slow reader, on purpose,
            # and it resumes at a keyframe (_forward_tcp); old packets now would only be decoded out of order.
            return
        producer = self.producer
        producer.up_to_date()  # the packets asked for may still be in an ingest thread's queue
        for out_seq in seqs:
            seq = (out_seq - self.seq_offset) & 0xFFFF
            packet = producer.lookup(seq)
            if packet is None:
                continue
            b0, head, payload = rewrite(packet, self.plan)
            ts = (struct.unpack_from("!I", packet, 4)[0] + self.ts_offset) & 0xFFFFFFFF
            marker = packet[1] & 0x80
            if self.rtx_ssrc is not None:
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
                out = FIXED_HEADER.pack(b0 & 0xDF, marker | self.rtx_payload_type, self.rtx_seq, ts, self.rtx_ssrc)
                out += head + _U16.pack(out_seq & 0xFFFF) + (payload[: -payload[-1]] if b0 & 0x20 else payload)
            else:
                out = FIXED_HEADER.pack(b0, marker | self.payload_type, out_seq & 0xFFFF, ts, self.ssrc) + head + payload
            self.retransmits += 1
            self.retransmit_octets += len(payload) - (payload[-1] if b0 & 0x20 else 0)  # RFC 3550 payload octets
            self.transport.send_rtp(out)

    def request_keyframe(self, now: float) -> None:
        self.keyframe_requests += 1
        self.producer.request_keyframe(now)

    def on_report(self, fraction_lost: int, cumulative_lost: int) -> None:
        self.fraction_lost = fraction_lost
        self.player_lost = cumulative_lost

    def sender_report(self, now: float, ntp: int) -> bytes | None:
        """SR body fields (RFC 3550 §6.4.1) mapping our NTP clock to this player's RTP clock."""
        if self.seq_offset is None:
            return None
        rtp_now = self.producer.rtp_time_at(now, ntp)
        if rtp_now is None:
            return None
        return struct.pack(
            "!IQIII", self.ssrc, ntp, (rtp_now + self.ts_offset) & 0xFFFFFFFF,
            self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF,
        )
