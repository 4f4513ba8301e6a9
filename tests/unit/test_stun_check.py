"""media/stun_check.py against aioice: whatever the fast path accepts, aioice reads the same way, and the answers are
the same bytes. What it refuses, aioice still gets (the port falls back to it)."""

from __future__ import annotations

import random
import struct

import pytest
from aioice import stun

from webcall.media.stun_check import binding_response, parse_check, verify

PWD = b"r7QkS1pX0vYQ2n4mB8cD3e"


def check_bytes(rng: random.Random, username: str = "srvu:clnt", key: bytes = PWD, fingerprint: bool = True,
                extras: dict | None = None) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=rng.randbytes(12))
    request.attributes["USERNAME"] = username
    for name, value in (extras if extras is not None else {
            "PRIORITY": rng.getrandbits(32), "ICE-CONTROLLING": rng.getrandbits(64),
            **({"USE-CANDIDATE": None} if rng.random() < 0.5 else {})}).items():
        request.attributes[name] = value
    request.add_message_integrity(key)  # (aioice adds FINGERPRINT with it)
    data = bytes(request)
    return data if fingerprint else _without_fingerprint(data)


def _without_fingerprint(data: bytes) -> bytes:
    return data[:2] + struct.pack("!H", len(data) - 20 - 8) + data[4:-8]


def aioice_answer(data: bytes, key: bytes, addr: tuple[str, int]) -> tuple[str, bool, bool, bytes]:
    request = stun.parse_message(data)
    response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                            transaction_id=request.transaction_id)
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    response.add_message_integrity(key)
    return (request.attributes["USERNAME"], "USE-CANDIDATE" in request.attributes,
            request.check_message_integrity(key), bytes(response))


ADDRESSES = [("127.0.0.1", 40000), ("203.0.113.7", 1), ("10.1.2.3", 65535), ("::1", 5000),
             ("2001:db8::8a2e:370:7334", 49152)]


@pytest.mark.parametrize("addr", ADDRESSES)
def test_the_usual_check_is_read_and_answered_as_aioice_does(addr: tuple[str, int]) -> None:
    rng = random.Random(7)
    for i in range(200):
        data = check_bytes(rng, f"u{i}:c{i}", fingerprint=i % 3 != 0)
        check = parse_check(data)
        assert check is not None
        username, use_candidate, valid, response = aioice_answer(data, PWD, addr)
        assert (check.username, check.use_candidate, verify(check, PWD)) == (username, use_candidate, valid)
        assert valid
        assert binding_response(check.transaction_id, addr, PWD) == response
        assert not verify(check, PWD[:-1] + b"x")


def test_a_check_signed_with_another_key_fails_in_both() -> None:
    data = check_bytes(random.Random(1), key=b"someone else's password")
    check = parse_check(data)
    assert check is not None and not verify(check, PWD)
    assert not stun.parse_message(data).check_message_integrity(PWD)


def test_a_flipped_bit_anywhere_is_refused_or_fails_as_in_aioice() -> None:
    rng = random.Random(3)
    base = check_bytes(rng)
    for position in range(len(base)):
        data = bytearray(base)
        data[position] ^= 1 << rng.randrange(8)
        data = bytes(data)
        check = parse_check(data)
        if check is None:
            continue  # aioice's turn, as before
        request = stun.parse_message(data)  # what we accept, aioice parses
        assert request.message_method == stun.Method.BINDING and request.message_class == stun.Class.REQUEST
        assert check.username == request.attributes.get("USERNAME")
        assert verify(check, PWD) == request.check_message_integrity(PWD)


@pytest.mark.parametrize("mangle", [
    "short", "response", "length", "cookie", "repeated", "after-integrity", "no-integrity", "no-username",
    "bad-priority", "other-known", "truncated", "bad-utf8", "bad-fingerprint",
])
def test_unusual_shapes_are_left_to_aioice(mangle: str) -> None:
    rng = random.Random(5)
    data = check_bytes(rng, fingerprint=False)  # (a FINGERPRINT would refuse every mangled one by itself)
    if mangle == "short":
        data = data[:19]
    elif mangle == "response":
        data = b"\x01\x01" + data[2:]
    elif mangle == "length":
        data = data + b"\0\0\0\0"
    elif mangle == "cookie":
        data = data[:4] + b"\0\0\0\0" + data[8:]
    elif mangle == "repeated":
        data = _insert_before_integrity(data, struct.pack("!HH", 0x0024, 4) + b"\0\0\0\1")
    elif mangle == "after-integrity":
        data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + struct.pack("!HH", 0x8022, 4) + b"abcd"
    elif mangle == "no-integrity":
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        request.attributes["USERNAME"] = "a:b"
        data = bytes(request)
    elif mangle == "no-username":
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        request.attributes["PRIORITY"] = 1
        request.add_message_integrity(PWD)
        data = bytes(request)
    elif mangle == "bad-priority":
        data = check_bytes(rng, extras={}, fingerprint=False)
        data = _insert_before_integrity(data, struct.pack("!HH", 0x0024, 2) + b"\0\1\0\0")
    elif mangle == "other-known":
        data = check_bytes(rng, extras={"SOFTWARE": "x"}, fingerprint=False)
    elif mangle == "truncated":
        data = data[:-3]
        data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    elif mangle == "bad-utf8":
        data = check_bytes(rng, username="ab:cd", fingerprint=False)
        at = data.index(b"ab:cd")
        data = data[:at] + b"\xff" + data[at + 1:]
    elif mangle == "bad-fingerprint":
        data = check_bytes(rng)
        data = data[:-1] + bytes((data[-1] ^ 1,))
        with pytest.raises(ValueError):
            stun.parse_message(data)
    assert parse_check(data) is None


def test_unknown_attributes_are_skipped_as_aioice_skips_them() -> None:
    """GOOG-NETWORK-INFO (0xC057), which Chrome sends in every check, is not aioice's: both skip it."""
    rng = random.Random(9)
    data = _without_fingerprint(check_bytes(rng))
    data = _insert_before_integrity(data, struct.pack("!HH", 0xC057, 4) + b"\0\1\0\x0a")
    check = parse_check(data)
    assert check is not None
    assert check.username == stun.parse_message(data).attributes["USERNAME"]


def _insert_before_integrity(data: bytes, attribute: bytes) -> bytes:
    """`attribute` put before MESSAGE-INTEGRITY (whose value is then stale: only the parse is under test)."""
    at = 20
    while struct.unpack_from("!H", data, at)[0] != 0x0008:
        at += 4 + struct.unpack_from("!H", data, at + 2)[0]
        at += -at % 4
    out = data[:at] + attribute + data[at:]
    return out[:2] + struct.pack("!H", len(out) - 20) + out[4:]
