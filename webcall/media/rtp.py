"""RTP packet surgery for forwarding: header fields, header extensions, keyframes and resolution.

Everything here works on `bytes` with index arithmetic and `struct`, because it runs once per packet.
"""

from __future__ import annotations

import struct

FIXED_HEADER = struct.Struct("!BBHII")
SEQ_TS = struct.Struct("!HI")
U16 = struct.Struct("!H")

ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000  # top 12 bits; the low 4 are "appbits"


def ts_delta(a: int, b: int) -> int:
    """a - b for two 32-bit RTP timestamps, taken the shorter way round the wrap (-2**31 .. 2**31 - 1)."""
    delta = (a - b) & 0xFFFFFFFF
    return delta - 0x100000000 if delta >= 0x80000000 else delta


def is_rtcp(data: bytes) -> bool:
    """RFC 5761: RTCP packet types 192–223 collide with RTP payload types 64–95 (+ marker)."""
    return 192 <= data[1] <= 223


def split(packet: bytes) -> tuple[int, int, int]:
    """(end of CSRCs, end of header extension, end of payload) — raises ValueError on a malformed packet."""
    length = len(packet)
    if length < 12:
        raise ValueError("truncated RTP packet")
    b0 = packet[0]
    pos = 12 + 4 * (b0 & 0x0F)
    ext_end = pos
    if b0 & 0x10:
        if pos + 4 > length:
            raise ValueError("truncated extension header")
        ext_end = pos + 4 + 4 * U16.unpack_from(packet, pos + 2)[0]
    end = length
    if b0 & 0x20:
        end -= packet[-1]
    if ext_end > end or length < 12:
        raise ValueError("truncated RTP packet")
    return pos, ext_end, end


def parse_extensions(packet: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """Elements of a one-byte (RFC 8285 §4.2) or two-byte (§4.3) header extension block."""
    if end == start:
        return []
    profile = U16.unpack_from(packet, start)[0]
    pos, elements = start + 4, []
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            b = packet[pos]
            if b == 0:  # padding
                pos += 1
                continue
            ext_id, size = b >> 4, (b & 0x0F) + 1
            if ext_id == 15 or pos + 1 + size > end:
                break
            elements.append((ext_id, packet[pos + 1 : pos + 1 + size]))
            pos += 1 + size
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos + 1 < end:
            ext_id = packet[pos]
            if ext_id == 0:
                pos += 1
                continue
            size = packet[pos + 1]
            if pos + 2 + size > end:
                break
            elements.append((ext_id, packet[pos + 2 : pos + 2 + size]))
            pos += 2 + size
    return elements


def build_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """An extension block (with its 4-byte header), one-byte form whenever the elements allow it."""
    if not elements:
        return b""
    if all(0 < i < 15 and 0 < len(v) <= 16 for i, v in elements):
        body = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in elements)
        profile = ONE_BYTE_PROFILE
    else:
        body = b"".join(bytes((i, len(v))) + v for i, v in elements)
        profile = TWO_BYTE_PROFILE
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", profile, len(body) // 4) + body


# --- keyframes -----------------------------------------------------------------------------------

def vp8_payload_offset(payload: bytes, start: int) -> tuple[int, bool]:
    """(offset of the VP8 payload, starts a frame) after the RFC 7741 payload descriptor."""
    b0 = payload[start]
    pos = start + 1
    if b0 & 0x80:  # X: extended control bits
        x = payload[pos]
        pos += 1
        if x & 0x80:  # I: picture id, 7 or 15 bits
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/KEYIDX
            pos += 1
    return pos, bool(b0 & 0x10) and (b0 & 0x07) == 0


def vp8_keyframe_size(packet: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(width, height) if this packet starts a VP8 keyframe, else None."""
    if end - start < 11:  # descriptor + frame tag + start code + size: anything shorter is no keyframe start
        return None
    pos, frame_start = vp8_payload_offset(packet, start)
    if not frame_start or pos + 10 > end or packet[pos] & 0x01:  # P bit set: inter frame
        return None
    if packet[pos + 3 : pos + 6] != b"\x9d\x01\x2a":
        return None
    return (
        (packet[pos + 6] | (packet[pos + 7] << 8)) & 0x3FFF,
        (packet[pos + 8] | (packet[pos + 9] << 8)) & 0x3FFF,
    )


def h264_nal_units(packet: bytes, start: int, end: int) -> list[bytes]:
    """NAL units that begin in this packet (single NAL, STAP-A, or the start of an FU-A)."""
    if start >= end:
        return []
    nal_type = packet[start] & 0x1F
    if 1 <= nal_type <= 23:
        return [packet[start:end]]
    if nal_type == 24:  # STAP-A
        units, pos = [], start + 1
        while pos + 2 <= end:
            size = U16.unpack_from(packet, pos)[0]
            units.append(packet[pos + 2 : pos + 2 + size])
            pos += 2 + size
        return units
    if nal_type == 28 and start + 1 < end and packet[start + 1] & 0x80:  # FU-A start
        header = (packet[start] & 0xE0) | (packet[start + 1] & 0x1F)
        return [bytes((header,)) + packet[start + 2 : end]]
    return []


def h264_keyframe_size(packet: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(width, height) — (0, 0) when unknown — if this packet starts an IDR access unit, else None."""
    size: tuple[int, int] | None = None
    for nal in h264_nal_units(packet, start, end):
        if not nal:
            continue
        nal_type = nal[0] & 0x1F
        if nal_type == 7:
            try:
                size = h264_sps_size(nal)
            except (IndexError, ValueError):
                size = (0, 0)
        elif nal_type == 5 and size is None:
            size = (0, 0)
    return size


class _BitReader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def bit(self) -> int:
        value = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bit() == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-golomb")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        v = self.ue()
        return (v + 1) // 2 if v & 1 else -(v // 2)


def h264_sps_size(nal: bytes) -> tuple[int, int]:
    """Picture size from a sequence parameter set (ITU-T H.264 §7.3.2.1.1), cropping applied."""
    rbsp = nal[1:].replace(b"\x00\x00\x03", b"\x00\x00")
    r = _BitReader(rbsp)
    profile_idc = r.bits(8)
    r.bits(16)  # constraint flags + level_idc
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            r.bit()
        r.ue()
        r.ue()
        r.bit()
        if r.bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bit():
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se()) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.bit()
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bit()
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.bit()
    if not frame_mbs_only:
        r.bit()
    r.bit()
    width, height = width_mbs * 16, (2 - frame_mbs_only) * height_units * 16
    if r.bit():  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        crop_x = 2 if chroma_format_idc in (1, 2) else 1
        crop_y = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
    return width, height


KEYFRAME_PROBES = {"VP8": vp8_keyframe_size, "H264": h264_keyframe_size}


# _ONE_BYTE_HEADERS[id][length]: the one-byte form's element header (RFC 8285 §4.2), None where it cannot be used.
_ONE_BYTE_HEADERS = [[bytes(((i << 4) | (n - 1),)) if 0 < i < 15 and 0 < n <= 16 else None for n in range(256)]
                     for i in range(256)]
# _WORDS_PAD[body length]: (the one-byte block's 4-byte header, the padding to a 32-bit boundary)
_WORDS_PAD = [(struct.pack("!HH", ONE_BYTE_PROFILE, (n + 3) // 4), bytes(-n % 4)) for n in range(15 * 17 + 1)]


class ExtensionPlan:
    """How one player layout wants the header extensions: publisher id → player id, plus its own mid."""

    __slots__ = ("key", "mapping", "mid", "_mid_only", "_one_byte", "_mid_element")

    def __init__(self, mapping: dict[int, int], mid: tuple[int, bytes] | None) -> None:
        self.mapping = mapping
        self.mid = mid
        self.key = (tuple(sorted(mapping.items())), mid)
        self._mid_only = build_extensions([mid] if mid else [])  # the block when nothing else maps
        # The usual case, precomputed: every id this plan writes fits the one-byte form, so a block is built by
        # joining each element's ready-made header byte and value (`_build_one_byte`, once per packet per plan)
        # instead of the general build_extensions. Elements longer than 16 bytes still take the general path.
        one_byte = all(0 < i < 15 for i in mapping.values()) and (mid is None or (0 < mid[0] < 15 and
                                                                                  0 < len(mid[1]) <= 16))
        self._one_byte = {i: _ONE_BYTE_HEADERS[j] for i, j in mapping.items()} if one_byte else None
        self._mid_element = _ONE_BYTE_HEADERS[mid[0]][len(mid[1])] + mid[1] if one_byte and mid else b""

    def build(self, elements: list[tuple[int, bytes]] | None) -> bytes:
        if not elements or not self.mapping:
            return self._mid_only
        if self._one_byte is not None:
            block = self._build_one_byte(elements)
            if block is not None:
                return block
        mapping = self.mapping
        out = [(mapping[i], v) for i, v in elements if i in mapping]
        if not out:
            return self._mid_only
        if self.mid is not None:
            out.append(self.mid)
        return build_extensions(out)

    def _build_one_byte(self, elements: list[tuple[int, bytes]]) -> bytes | None:
        """build_extensions' output for the mapped elements + mid, when all fit the one-byte form; else None."""
        headers = self._one_byte
        parts = []
        for i, v in elements:
            table = headers.get(i)
            if table is not None:
                header = table[len(v)]
                if header is None:  # empty or longer than 16 bytes: the two-byte form
                    return None
                parts.append(header)
                parts.append(v)
        if not parts:
            return self._mid_only
        parts.append(self._mid_element)
        body = b"".join(parts)
        if len(body) >= len(_WORDS_PAD):  # repeated ids from a strange publisher: the general path
            return None
        words, pad = _WORDS_PAD[len(body)]
        return words + body + pad


def rewrite(packet: bytes, plan: ExtensionPlan) -> tuple[int, bytes, bytes]:
    """(first header byte, CSRCs + extension block, payload) of a stored packet for one player layout."""
    csrc_end, ext_end, _ = split(packet)
    elements = parse_extensions(packet, csrc_end, ext_end) if ext_end > csrc_end else None
    ext = plan.build(elements)
    b0 = packet[0] & 0xEF
    return (b0 | 0x10 if ext else b0), packet[12:csrc_end] + ext, packet[ext_end:]
