"""Seeds from real inputs (tests/fixtures/captures: the SDK's own frames) and mutation strategies."""

from __future__ import annotations

import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captures"


@cache
def client_frames() -> tuple[str, ...]:
    """Every client→server frame the SDK sent in the captures, as JSON text."""
    frames = []
    for path in sorted(CAPTURES.glob("*.json")):
        for m in json.loads(path.read_text())["messages"]:
            if m.get("dir") == "c2s":
                frames.append(json.dumps({"message": m["message"], "data": m.get("data")}))
    return tuple(dict.fromkeys(frames))


@cache
def offers() -> tuple[tuple[str, str], ...]:
    """(message name, SDP offer) of every publishStream/playStream in the captures."""
    out = []
    for frame in client_frames():
        obj = json.loads(frame)
        if obj["message"] in ("publishStream", "playStream") and obj["data"] and isinstance(obj["data"][0], dict):
            sdp = obj["data"][0].get("sdp")
            if isinstance(sdp, str):
                out.append((obj["message"], sdp))
    return tuple(dict.fromkeys(out))


@cache
def client_objects() -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(f)["data"][0] for f in client_frames()
                 if isinstance(json.loads(f).get("data"), list) and json.loads(f)["data"]
                 and isinstance(json.loads(f)["data"][0], dict))


# --- generic values ---------------------------------------------------------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
# Strings that matter to the parsers: control characters, separators, huge and odd numbers.
nasty_text = st.sampled_from(["", " ", "\x00", "\r\n", "\u2028", "\ud800", "null", "NaN", "-1", "1e999",
                              "a" * 300, ":", "/", ",", "=", "*", "\\", "\"", "🙂", "\u0301"])
any_text = st.text(max_size=60) | nasty_text


@st.composite
def mutated_json(draw, base: Any) -> Any:
    """`base` with a few random edits: replace, delete or add a key/element anywhere in the tree."""
    value = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 4))):
        path = []
        node = value
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            path.append(key)
            node = node[key]
        if not path:
            if isinstance(value, dict):
                value[draw(any_text)] = draw(json_values)
            else:
                value = draw(json_values)
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values | any_text)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(any_text)] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return value


@st.composite
def mutated_bytes(draw, base: bytes, max_edits: int = 6) -> bytes:
    """`base` with byte flips, insertions, deletions, truncation or extension."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, max_edits))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        if action in ("flip", "set", "delete") and not data:
            continue
        if action == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif action == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            i = draw(st.integers(0, len(data) - 1))
            del data[i:i + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[draw(st.integers(0, len(data))):]
        else:
            data += draw(st.binary(max_size=16))
    return bytes(data)


@st.composite
def mutated_text(draw, base: str) -> str:
    """Line-level edits of a text (SDP): drop, duplicate, swap, or corrupt lines; change a token."""
    lines = base.split("\r\n")
    for _ in range(draw(st.integers(0, 5))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "corrupt", "token", "insert", "newline"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "corrupt":
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + draw(any_text)
        elif action == "token":
            tokens = lines[i].split(" ")
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[j] = draw(any_text | st.integers(-(2**40), 2**40).map(str))
            lines[i] = " ".join(tokens)
        elif action == "insert":
            prefix = draw(st.sampled_from(["a=", "m=", "c=", "a=rtpmap:", "a=fmtp:", "a=extmap:", "a=ssrc:",
                                           "a=ssrc-group:FID ", "a=mid:", "a=rtcp-fb:", "a=fingerprint:",
                                           "a=ice-ufrag:", "a=group:BUNDLE "]))
            lines.insert(i, prefix + draw(any_text))
        else:
            lines[i] = lines[i].replace(draw(st.sampled_from([" ", ":", "/", "="])), "\n", 1)
    return "\r\n".join(lines)


def stun_seeds() -> list[bytes]:
    """Real ICE Binding requests (as browsers send them), an indication and a response."""
    from aioice import stun

    out = []
    for use_candidate in (False, True):
        req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=bytes(range(12)))
        req.attributes["USERNAME"] = "localufrag:remoteufrag"
        req.attributes["PRIORITY"] = 1853824767
        req.attributes["ICE-CONTROLLING"] = 0x1122334455667788
        if use_candidate:
            req.attributes["USE-CANDIDATE"] = None
        req.add_message_integrity(b"localpassword-local-pwd")
        req.add_fingerprint()
        out.append(bytes(req))
    ind = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.INDICATION)
    ind.add_fingerprint()
    out.append(bytes(ind))
    resp = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE)
    resp.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.1", 40000)
    resp.attributes["ERROR-CODE"] = (487, "Role Conflict")
    out.append(bytes(resp))
    return out


def rtp_seeds() -> list[bytes]:
    """RTP as browsers send it: one-byte and two-byte extensions, CSRCs, padding, VP8/H264/RTX payloads."""
    def rtp(pt: int, payload: bytes, *, ext: bytes = b"", csrcs: int = 0, pad: int = 0, marker: bool = False):
        b0 = 0x80 | (0x10 if ext else 0) | (0x20 if pad else 0) | csrcs
        head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, 4242, 90000, 0x11223344)
        body = head + b"".join(struct.pack("!I", 0xC0000000 + i) for i in range(csrcs)) + ext + payload
        return body + (bytes(pad - 1) + bytes((pad,)) if pad else b"")

    one_byte = struct.pack("!HH", 0xBEDE, 2) + bytes((0x10, 0xAB, 0x22, 1, 2, 3, 0, 0))  # id1 len1, id2 len3
    two_byte = struct.pack("!HH", 0x1000, 2) + bytes((1, 2, 9, 9, 5, 0, 0, 0))
    vp8_key = bytes((0x90, 0x80, 0x12)) + bytes((0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00)) + b"\0" * 8
    h264_sps = bytes((0x67, 0x42, 0xC0, 0x1F, 0xDA, 0x01, 0x40, 0x16, 0xE8, 0x06, 0xD0, 0xA1, 0x35))
    stap_a = bytes((0x18,)) + struct.pack("!H", len(h264_sps)) + h264_sps + struct.pack("!H", 2) + b"\x68\xce"
    fu_a = bytes((0x7C, 0x85)) + b"\x88\x84" + b"\0" * 20
    return [
        rtp(96, vp8_key, ext=one_byte, marker=True),
        rtp(96, vp8_key, ext=two_byte, csrcs=2),
        rtp(96, b"\x10\x00" + b"\1" * 30, pad=4),
        rtp(102, stap_a, ext=one_byte),
        rtp(102, fu_a),
        rtp(102, h264_sps),
        rtp(97, struct.pack("!H", 4241) + vp8_key, ext=one_byte),  # RTX: OSN + original payload
        rtp(111, b"\xfc" + b"\x55" * 40, ext=one_byte),
    ]


def rtcp_seeds() -> list[bytes]:
    """Compound RTCP as browsers send it: SR + SDES, RR, NACK, PLI, REMB, BYE."""
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x11223344, 0xE1234567, 0x89ABCDEF, 90000, 10, 1000)
    sdes = struct.pack("!BBHI", 0x81, 202, 3, 0x11223344) + bytes((1, 4)) + b"abcd" + b"\0\0"
    rr = struct.pack("!BBHI", 0x81, 201, 7, 0x55667788) + struct.pack("!IIIIII", 0x11223344, 0x01000005,
                                                                        4242, 12, 0, 0)
    nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 0x55667788, 0x11223344, 4240, 0x0003)
    pli = struct.pack("!BBHII", 0x81, 206, 2, 0x55667788, 0x11223344)
    remb = struct.pack("!BBHII", 0x8F, 206, 5, 0x55667788, 0) + b"REMB" + bytes((1, 0x0A, 0x12, 0x34)) + \
        struct.pack("!I", 0x11223344)
    bye = struct.pack("!BBHI", 0x81, 203, 1, 0x11223344)
    return [sr + sdes, rr, nack, pli, remb, bye, sr + rr + nack + pli + remb + bye]
