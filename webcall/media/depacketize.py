"""RTP → frames, for the recorder: a reorder buffer with a loss deadline, then per-codec frame assembly.

Runs in the recorder's worker thread, never on the event loop. Nothing here touches files or PyAV, so it
is unit-tested with packets alone.

* `ReorderBuffer` puts packets back in sequence order. A hole is waited for (the producer NACKs the
  publisher, and retransmissions come back through `Producer.receive` and so through the recorder's sink)
  for `wait` seconds after the first packet behind it arrived; then the hole is declared lost and the
  packet after it is delivered with `lost=True`.
* `Vp8Assembler` / `H264Assembler` group packets into frames by RTP timestamp and marker bit, check that
  each frame is whole (first packet starts the picture, nothing lost inside, marker seen) and keep the
  *chain* valid: after any loss, or a frame that is not whole, every frame is dropped until the next whole
  keyframe, and `want_keyframe` tells the recorder to ask the publisher for one. A corrupt frame is never
  emitted.
* `OpusAssembler`: one packet is one frame; a loss is only a gap in time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .rtp import h264_sps_size, split, vp8_keyframe_size, vp8_payload_offset

_TS = struct.Struct("!I")
_U16 = struct.Struct("!H")
START_CODE = b"\x00\x00\x00\x01"


@dataclass(slots=True)
class Frame:
    """One access unit: what the muxer writes as one packet."""

    ts: int  # RTP timestamp (32-bit, as sent)
    data: bytes  # VP8 frame, H264 Annex-B access unit, or one Opus packet
    keyframe: bool
    arrival: float  # arrival (time.monotonic) of its last packet
    size: tuple[int, int] | None = None  # (width, height) of a video keyframe when known


class ReorderBuffer:
    """Sequence-ordered delivery of one SSRC's packets, with a deadline for holes."""

    HORIZON = 4096  # a packet further ahead than this resets the buffer (stream restart, garbage)
    START_DELAY = 0.1  # the first delivery waits this long, so packets reordered at the start still count

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.packets: dict[int, tuple[bytes, float]] = {}  # ext seq -> (packet, arrival)
        self.next = -1  # ext seq of the next packet to deliver
        self.highest = -1
        self.started = False  # something was delivered: from here on `next` only moves forward
        self.lost = self.late = self.duplicates = 0
        self._lost_pending = False  # a hole was skipped: flag the next delivered packet

    def push(self, packet: bytes, arrival: float) -> None:
        seq = (packet[2] << 8) | packet[3]
        if self.highest < 0:
            self.highest = self.next = seq
            ext = seq
        else:
            delta = (seq - self.highest) & 0xFFFF
            ext = self.highest + delta if delta < 0x8000 else self.highest - (0x10000 - delta)
            if ext - self.next > self.HORIZON:  # far ahead: whatever is pending will never complete
                self.lost += ext - self.next - len(self.packets)
                self.packets.clear()
                self.next = ext
                self._lost_pending = True
            if ext > self.highest:
                self.highest = ext
        if ext < self.next and not self.started:
            self.next = ext  # reordered before anything was delivered: start from it
        if ext < self.next:
            self.late += 1  # a retransmission after we gave up, or a duplicate of a delivered packet
        elif ext in self.packets:
            self.duplicates += 1
        else:
            self.packets[ext] = (packet, arrival)

    def pop(self, now: float, flush: bool = False) -> list[tuple[bytes, float, bool]]:
        """Packets ready in order as (packet, arrival, lost_before). `flush` gives up on every hole."""
        out: list[tuple[bytes, float, bool]] = []
        packets = self.packets
        if not self.started:
            if not packets or (not flush and now - min(arrival for _, arrival in packets.values()) < self.START_DELAY):
                return out
            self.started = True
        while packets:
            item = packets.pop(self.next, None)
            if item is not None:
                out.append((item[0], item[1], self._lost_pending))
                self._lost_pending = False
                self.next += 1
                continue
            first = min(packets)
            if not flush and now - packets[first][1] < self.wait:
                break  # still hoping for a retransmission
            self.lost += first - self.next
            self.next = first
            self._lost_pending = True
        return out


class _VideoAssembler:
    """Frame grouping and chain validity shared by VP8 and H264; codecs fill in `_add`/`_finish`."""

    def __init__(self) -> None:
        self.ts: int | None = None  # timestamp of the frame being assembled
        self.whole = True  # nothing lost inside the current frame so far
        self.arrival = 0.0
        self.need_keyframe = True  # the chain is broken (or not started): only a whole keyframe restarts it
        self.want_keyframe = False  # set when a keyframe request should go to the publisher
        self.frames = self.dropped = self.keyframes = 0

    def push(self, packet: bytes, arrival: float, lost_before: bool) -> list[Frame]:
        out: list[Frame] = []
        ts = _TS.unpack_from(packet, 4)[0]
        if self.ts is not None and ts != self.ts:  # the previous frame's marker never came
            self._close(out, complete=False)
        if lost_before:
            self._broken()
            if self.ts is not None:
                self.whole = False  # the hole is inside this frame
        try:
            _, start, end = split(packet)
        except ValueError:
            self._broken()
            self.whole = False
            start = end = 0
        if self.ts is None:
            self.ts = ts
            self._begin()
        self.arrival = arrival
        if end > start and not self._add(packet, start, end):
            self.whole = False
        if packet[1] & 0x80:
            self._close(out, complete=True)
        return out

    def flush(self) -> list[Frame]:
        out: list[Frame] = []
        if self.ts is not None:
            self._close(out, complete=False)  # no marker: an unfinished frame is not written
        return out

    def _broken(self) -> None:
        if not self.need_keyframe:
            self.want_keyframe = True
        self.need_keyframe = True

    def _close(self, out: list[Frame], complete: bool) -> None:
        ts, whole = self.ts, self.whole
        self.ts, self.whole = None, True
        frame = self._finish(ts) if complete and whole else None  # type: ignore[arg-type]
        if frame is None:
            self.dropped += 1
            self._broken()
            self.want_keyframe = True
            return
        if self.need_keyframe and not frame.keyframe:
            self.dropped += 1
            return
        if frame.keyframe:
            self.keyframes += 1
            self.need_keyframe = False
        self.frames += 1
        out.append(frame)

    # codec hooks
    def _begin(self) -> None:
        raise NotImplementedError

    def _add(self, packet: bytes, start: int, end: int) -> bool:
        raise NotImplementedError

    def _finish(self, ts: int) -> Frame | None:
        raise NotImplementedError


class Vp8Assembler(_VideoAssembler):
    """RFC 7741: the payload descriptor is stripped; a frame starts with S=1, PID=0."""

    def _begin(self) -> None:
        self.parts: list[bytes] = []
        self.started = False
        self.size: tuple[int, int] | None = None

    def _add(self, packet: bytes, start: int, end: int) -> bool:
        try:
            pos, frame_start = vp8_payload_offset(packet, start)
        except IndexError:
            return False
        if pos > end:
            return False
        if frame_start:
            if self.parts:
                return False  # a second start in one timestamp: not one frame
            self.started = True
            self.size = vp8_keyframe_size(packet, start, end)
        elif not self.parts:
            return False  # the first packet we have is not the start of the frame
        self.parts.append(packet[pos:end])
        return True

    def _finish(self, ts: int) -> Frame | None:
        if not self.started or not self.parts or not self.parts[0]:
            return None
        data = b"".join(self.parts)
        keyframe = not (data[0] & 0x01)  # P bit of the frame tag: 0 = keyframe
        return Frame(ts, data, keyframe, self.arrival, self.size if keyframe else None)


class H264Assembler(_VideoAssembler):
    """RFC 6184 (packetization-mode 1: single NAL, STAP-A, FU-A) → one Annex-B access unit per frame.

    A frame is whole when its first slice has first_mb_in_slice = 0, every FU-A is complete and nothing
    was lost inside. A keyframe is an access unit with an IDR slice; the latest SPS and PPS are kept and
    put in front of an IDR that comes without them, so every keyframe can start a decoder (and gives the
    MP4 muxer its avcC).
    """

    def __init__(self) -> None:
        super().__init__()
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.size: tuple[int, int] | None = None

    def _begin(self) -> None:
        self.nals: list[bytes] = []
        self.fu: list[bytes] | None = None  # fragments of the NAL unit being reassembled
        self.first_slice_ok: bool | None = None  # None until the first VCL NAL unit is seen
        self.idr = False
        self.has_sps = self.has_pps = False

    def _nal(self, nal: bytes) -> bool:
        if not nal:
            return False
        nal_type = nal[0] & 0x1F
        if nal_type in (1, 5):
            if self.first_slice_ok is None:
                # slice_header() starts with first_mb_in_slice, ue(v): a leading 1 bit means 0.
                self.first_slice_ok = len(nal) > 1 and bool(nal[1] & 0x80)
            if nal_type == 5:
                self.idr = True
        elif nal_type == 7:
            self.has_sps = True
            self.sps = nal
            try:
                self.size = h264_sps_size(nal)
            except (IndexError, ValueError):
                pass
        elif nal_type == 8:
            self.has_pps = True
            self.pps = nal
        self.nals.append(nal)
        return True

    def _add(self, packet: bytes, start: int, end: int) -> bool:
        header = packet[start]
        nal_type = header & 0x1F
        if nal_type == 28:  # FU-A
            if end - start < 2:
                return False
            fu = packet[start + 1]
            if fu & 0x80:  # start
                if self.fu is not None:
                    return False
                self.fu = [bytes(((header & 0xE0) | (fu & 0x1F),)), packet[start + 2 : end]]
            elif self.fu is None:
                return False  # a middle or end without its start
            else:
                self.fu.append(packet[start + 2 : end])
            if fu & 0x40:  # end
                nal, self.fu = b"".join(self.fu), None
                return self._nal(nal)
            return True
        if self.fu is not None:
            return False  # an FU-A left unfinished
        if nal_type == 24:  # STAP-A
            pos = start + 1
            while pos + 2 <= end:
                size = _U16.unpack_from(packet, pos)[0]
                pos += 2
                if size == 0 or pos + size > end:
                    return False
                if not self._nal(packet[pos : pos + size]):
                    return False
                pos += size
            return pos == end
        if 1 <= nal_type <= 23:
            return self._nal(packet[start:end])
        return False  # STAP-B, MTAP, FU-B: not in packetization-mode 1

    def _finish(self, ts: int) -> Frame | None:
        if self.fu is not None or not self.first_slice_ok:
            return None
        nals = self.nals
        if self.idr:
            if not self.has_pps and self.pps is not None:
                nals.insert(0, self.pps)
            if not self.has_sps and self.sps is not None:
                nals.insert(0, self.sps)
            if self.sps is None or self.pps is None:
                return None  # an IDR nobody can decode: wait for one with parameter sets
        data = b"".join(START_CODE + nal for nal in nals)
        return Frame(ts, data, self.idr, self.arrival, self.size if self.idr else None)


class OpusAssembler:
    """One RTP packet is one Opus packet (RFC 7587); a loss is a gap in time, nothing to repair."""

    need_keyframe = False
    want_keyframe = False

    def __init__(self) -> None:
        self.frames = self.dropped = self.keyframes = 0

    def push(self, packet: bytes, arrival: float, lost_before: bool) -> list[Frame]:
        try:
            _, start, end = split(packet)
        except ValueError:
            self.dropped += 1
            return []
        if end <= start:
            return []  # empty (DTX keepalive) packets carry no audio
        self.frames += 1
        return [Frame(_TS.unpack_from(packet, 4)[0], packet[start:end], True, arrival)]

    def flush(self) -> list[Frame]:
        return []


ASSEMBLERS = {"VP8": Vp8Assembler, "H264": H264Assembler, "OPUS": OpusAssembler}
