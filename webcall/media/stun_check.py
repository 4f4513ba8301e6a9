"""ICE connectivity checks the way every agent sends them, parsed and answered without aioice's general codec.

Sans-I/O: bytes in, bytes out. An ICE-lite server answers one Binding request per player every few seconds (consent
freshness, RFC 7675): aioice's `parse_message` and `Message.__bytes__` build dicts, parse addresses with `ipaddress`
and XOR them byte by byte, about 23 µs a check; this does the same for the shape browsers, aiortc and GStreamer send
(docs/per-packet-cost.md, "Seventeenth pass"). Anything else — an unusual attribute, a repeated one, a stray byte —
is not parsed here (`parse_check` returns None) and goes through aioice as before, so this module only has to agree
with aioice on what it accepts: `tests/unit/test_stun_check.py` checks that it does, byte for byte.
"""

from __future__ import annotations

import binascii
import hmac
import socket
import struct
from typing import NamedTuple

from aioice.stun import ATTRIBUTES_BY_TYPE, COOKIE, FINGERPRINT_XOR

HEADER = struct.Struct("!HHI12s")
ATTRIBUTE = struct.Struct("!HH")
BINDING_REQUEST = 0x0001
BINDING_RESPONSE = 0x0101
USERNAME, MESSAGE_INTEGRITY, FINGERPRINT = 0x0006, 0x0008, 0x8028
XOR_MAPPED_ADDRESS = 0x0020
USE_CANDIDATE = 0x0025
# Attributes a check carries that aioice parses into values (their lengths as aioice can unpack them); any other
# type aioice knows sends the datagram to aioice. Types aioice does not know it skips, and so does this.
_CHECK_ATTRIBUTES = {0x0024: 4, USE_CANDIDATE: 0, 0x8029: 8, 0x802A: 8}  # PRIORITY, ICE-CONTROLLED/-CONTROLLING
_KNOWN = frozenset(ATTRIBUTES_BY_TYPE)
_COOKIE_BYTES = struct.pack("!I", COOKIE)
_INTEGRITY_HEADER = ATTRIBUTE.pack(MESSAGE_INTEGRITY, 20)
_FINGERPRINT_HEADER = ATTRIBUTE.pack(FINGERPRINT, 4)


class Check(NamedTuple):
    """A Binding request whose MESSAGE-INTEGRITY is still to be verified (`verify`)."""

    username: str
    use_candidate: bool
    transaction_id: bytes
    signed: bytes  # the message up to MESSAGE-INTEGRITY, its length field already covering that attribute
    integrity: bytes


def parse_check(data: bytes) -> Check | None:
    """The check in `data`, or None when it is not a Binding request of the usual shape (then aioice parses it:
    it may still be a check, or something the caller refuses)."""
    if len(data) < 20:
        return None
    kind, length, cookie, transaction_id = HEADER.unpack_from(data)
    if kind != BINDING_REQUEST or cookie != COOKIE or length != len(data) - 20:
        return None
    username: str | None = None
    use_candidate = False
    seen: set[int] = set()
    integrity_at = -1
    fingerprint = -1
    pos, end = 20, len(data)
    while pos < end:
        if pos + 4 > end:
            return None
        attr, size = ATTRIBUTE.unpack_from(data, pos)
        value_at, pos = pos + 4, pos + 4 + size + (-size % 4)
        if pos > end or attr in seen:
            return None
        seen.add(attr)
        if integrity_at >= 0:  # after MESSAGE-INTEGRITY only FINGERPRINT, and it ends the message
            if attr != FINGERPRINT or size != 4 or pos != end:
                return None
            fingerprint = int.from_bytes(data[value_at:value_at + 4], "big")
        elif attr == MESSAGE_INTEGRITY:
            if size != 20:
                return None
            integrity_at = value_at - 4
        elif attr == USERNAME:
            try:
                username = data[value_at:value_at + size].decode()
            except UnicodeDecodeError:
                return None
        elif attr in _CHECK_ATTRIBUTES:
            if size != _CHECK_ATTRIBUTES[attr]:
                return None
            use_candidate = use_candidate or attr == USE_CANDIDATE
        elif attr in _KNOWN:
            return None
    if username is None or integrity_at < 0:
        return None
    if fingerprint >= 0 and fingerprint != binascii.crc32(data[:end - 8]) ^ FINGERPRINT_XOR:  # (the last attribute)
        return None
    signed = _with_length(data, integrity_at + 24 - 20, integrity_at)
    return Check(username, use_candidate, transaction_id, signed, data[integrity_at + 4:integrity_at + 24])


def verify(check: Check, key: bytes) -> bool:
    """Does the check's MESSAGE-INTEGRITY hold for `key` (our ice-pwd)?"""
    return hmac.compare_digest(check.integrity, hmac.digest(key, check.signed, "sha1"))


def binding_response(transaction_id: bytes, addr: tuple, key: bytes) -> bytes:
    """The success response to a check from `addr` (host, port): XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY with `key`,
    FINGERPRINT; the bytes aioice makes for it."""
    host, port = addr[0], addr[1]
    if ":" in host:  # (a link-local address's scope is not part of it)
        family, packed = 2, socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        pad = _COOKIE_BYTES + transaction_id
    else:
        family, packed, pad = 1, socket.inet_aton(host), _COOKIE_BYTES
    xored = (int.from_bytes(packed, "big") ^ int.from_bytes(pad, "big")).to_bytes(len(packed), "big")
    mapped = ATTRIBUTE.pack(XOR_MAPPED_ADDRESS, 4 + len(packed)) + bytes((0, family)) + \
        (port ^ (COOKIE >> 16)).to_bytes(2, "big") + xored
    body_with_integrity = len(mapped) + 24
    head = HEADER.pack(BINDING_RESPONSE, body_with_integrity, COOKIE, transaction_id)
    integrity = hmac.digest(key, head + mapped, "sha1")
    message = HEADER.pack(BINDING_RESPONSE, body_with_integrity + 8, COOKIE, transaction_id) + mapped + \
        _INTEGRITY_HEADER + integrity
    return message + _FINGERPRINT_HEADER + (binascii.crc32(message) ^ FINGERPRINT_XOR).to_bytes(4, "big")


def _with_length(data: bytes, length: int, stop: int) -> bytes:
    """data[:stop] with the header's length field set to `length` (what MESSAGE-INTEGRITY and FINGERPRINT cover)."""
    return data[:2] + length.to_bytes(2, "big") + data[4:stop]
