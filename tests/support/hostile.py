"""Helpers for hostile-input tests: raw offers that never connect, hand-made STUN, UDP garbage.

Nothing here talks to the server by itself except `UdpProbe`, a bare UDP socket on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import socket
import struct
import uuid
from typing import Any

from aioice import stun
from aiortc import RTCPeerConnection, RTCRtpTransceiver

from .peers import codec_preferences, create_peer_connection, strip_candidates


# --------------------------------------------------------------------------------------------
# Offers and signalling payloads


async def raw_offer(
    role: str, *, audio: bool = True, video: bool = True, video_codec: str | None = "VP8"
) -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer, candidates stripped, WITHOUT setLocalDescription: this pc never gathers,
    never answers STUN and never does DTLS.  role "publish" → sendonly, "play" → recvonly.
    The caller must close the pc."""
    direction = "sendonly" if role == "publish" else "recvonly"
    pc = create_peer_connection()
    try:
        if audio:
            pc.addTransceiver("audio", direction=direction)
        if video:
            vt: RTCRtpTransceiver = pc.addTransceiver("video", direction=direction)
            if video_codec:
                vt.setCodecPreferences(codec_preferences("video", video_codec))
        offer = await pc.createOffer()
    except BaseException:
        await pc.close()
        raise
    return pc, strip_candidates(offer.sdp)


def stream_request(role: str, name: Any, sdp: Any, media_session_id: Any = None, **fields: Any) -> dict[str, Any]:
    """publishStream / playStream payload with the SDK's field set; `fields` override (None values kept)."""
    publish = role == "publish"
    payload: dict[str, Any] = {
        "mediaSessionId": str(uuid.uuid1()) if media_session_id is None else media_session_id,
        "name": name,
        "published": publish,
        "hasVideo": True,
        "hasAudio": True,
        "status": "PENDING",
        "record": False,
        "mediaProvider": "WebRTC",
        "sdp": sdp,
        "custom": {},
        "bitrate": 0,
        "minBitrate": 0,
        "maxBitrate": 0,
        "constraints": {"audio": True, "video": True},
    }
    payload.update(fields)
    return payload


_ATTR = re.compile(r"^a=([a-z-]+):(\S+)", re.MULTILINE)


def sdp_attr(sdp: str, name: str) -> str:
    """First value of a=<name>:<value> in the SDP (session or media level)."""
    for m in _ATTR.finditer(sdp.replace("\r\n", "\n")):
        if m.group(1) == name:
            return m.group(2)
    raise KeyError(f"a={name} not in SDP")


def sdp_candidate(sdp: str) -> tuple[str, int]:
    m = re.search(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", sdp, re.MULTILINE | re.IGNORECASE)
    if not m:
        raise KeyError("no host candidate in SDP")
    return m.group(1), int(m.group(2))


# --------------------------------------------------------------------------------------------
# STUN


def binding_request(username: str | None, key: bytes | None, *, use_candidate: bool = True) -> stun.Message:
    """An ICE connectivity check as a controlling agent would send it (RFC 8445 §7.1.1).
    `key` None → no MESSAGE-INTEGRITY (FINGERPRINT only)."""
    req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if username is not None:
        req.attributes["USERNAME"] = username
    req.attributes["PRIORITY"] = 0x6E7F1EFF
    req.attributes["ICE-CONTROLLING"] = random.getrandbits(64)
    if use_candidate:
        req.attributes["USE-CANDIDATE"] = None
    if key is not None:
        req.add_message_integrity(key)  # also adds FINGERPRINT
    else:
        req.add_fingerprint()
    return req


def stun_header(length: int, method_class: int = 0x0001, transaction_id: bytes | None = None) -> bytes:
    return struct.pack("!HHI12s", method_class, length, stun.COOKIE, transaction_id or random.randbytes(12))


def stun_with_attrs(attrs: list[tuple[int, bytes]], method_class: int = 0x0001) -> bytes:
    """A STUN message whose header length matches, with raw (possibly malformed) attributes."""
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attrs)
    return stun_header(len(body), method_class) + body


def garbage_datagrams(seed: int = 7) -> list[tuple[str, bytes]]:
    """(label, datagram) pairs: nothing here is a valid check for any transport."""
    rng = random.Random(seed)

    def rand(n: int) -> bytes:
        return rng.randbytes(n)

    out: list[tuple[str, bytes]] = [("empty", b"")]
    for b in (0x00, 0x01, 0x03, 0x16, 0x80, 0xBF, 0xFF):
        out.append((f"1 byte {b:#04x}", bytes([b])))
    for n in list(range(2, 70)) + [100, 200, 576, 1200, 1500, 4000]:
        out.append((f"random {n} bytes", rand(n)))
    # Every first byte, so each demux branch sees junk (RFC 7983 ranges: 0-3 STUN, 20-63 DTLS, 128-191 RTP).
    for b in range(256):
        for n in (2, 12, 40):
            out.append((f"first byte {b:#04x} len {n}", bytes([b]) + rand(n - 1)))
    # Fake STUN: bad lengths, unknown methods, malformed attributes.
    out += [
        ("stun header only, length 100", stun_header(100)),
        ("stun header, length 8, no body", stun_header(8)),
        ("stun 19 bytes", stun_header(0)[:19]),
        ("stun length not matching body", stun_header(4) + rand(12)),
        ("stun unknown method", stun_header(0, method_class=0x0FFF)),
        ("stun attr longer than message", stun_header(6) + struct.pack("!HH", 0x0024, 200) + b"ab"),
        ("stun short PRIORITY (2 bytes)", stun_with_attrs([(0x0024, b"\x01\x02")])),
        ("stun short ICE-CONTROLLING (3 bytes)", stun_with_attrs([(0x802A, b"\x01\x02\x03")])),
        ("stun short FINGERPRINT", stun_with_attrs([(0x8028, b"\x01")])),
        ("stun empty XOR-MAPPED-ADDRESS", stun_with_attrs([(0x0020, b"")])),
        ("stun bad address family", stun_with_attrs([(0x0001, b"\x00\x07\x00\x50\x7f\x00\x00\x01")])),
        ("stun wrong FINGERPRINT", stun_with_attrs([(0x0006, b"a:b"), (0x8028, b"\x00\x00\x00\x00")])),
        ("stun invalid utf-8 USERNAME", stun_with_attrs([(0x0006, b"\xff\xfe\xfd")])),
        ("stun short ERROR-CODE", stun_with_attrs([(0x0009, b"\x00")], method_class=0x0111)),
        ("stun binding request, no attributes", stun_header(0)),
        ("stun 0xffff attr type", stun_with_attrs([(0xFFFF, rand(9))])),
    ]
    # Fake DTLS: record headers (handshake/alert/appdata) with garbage and lying lengths.
    for content_type in (20, 21, 22, 23, 63):
        out.append((f"dtls type {content_type}", bytes([content_type, 0xFE, 0xFD]) + rand(10) + b"\x01\x00" + rand(30)))
        out.append((f"dtls type {content_type} short", bytes([content_type, 0xFE])))
    out.append(("dtls clienthello-ish", bytes([22, 0xFE, 0xFF]) + bytes(8) + struct.pack("!H", 200) + b"\x01" + rand(60)))
    # Fake RTP/RTCP.
    for second in (0x00, 0x60, 0x6F, 0xC8, 0xC9, 0xCD, 0xCE):
        out.append((f"rtp/rtcp {second:#04x}", bytes([0x80, second]) + rand(10)))
        out.append((f"rtp/rtcp {second:#04x} long", bytes([0x80, second]) + rand(1000)))
    out.append(("rtp 11 bytes", b"\x80\x60" + rand(9)))
    return out


class UdpProbe(asyncio.DatagramProtocol):
    """A bare UDP socket on 127.0.0.1 that records what it receives."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._event = asyncio.Event()

    sock: socket.socket

    @classmethod
    async def open(cls) -> UdpProbe:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, probe = await loop.create_datagram_endpoint(cls, sock=sock)
        probe.sock = sock
        return probe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        self._event.set()

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        # Straight to the socket: asyncio's sendto() silently skips empty datagrams on Python < 3.13.
        self.sock.sendto(data, addr)

    async def transact(self, request: stun.Message, addr: tuple[str, int], timeout: float = 2.0,
                       tries: int = 4) -> stun.Message:
        """Send a STUN request (with retransmissions) and return the matching response."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(tries):
            start = len(self.received)
            self.send(bytes(request), addr)
            wait_until = min(deadline, loop.time() + timeout / tries)
            while loop.time() < wait_until:
                for data, _src in self.received[start:]:
                    try:
                        msg = stun.parse_message(data)
                    except ValueError:
                        continue
                    if msg.transaction_id == request.transaction_id:
                        return msg
                self._event.clear()
                try:
                    await asyncio.wait_for(self._event.wait(), max(0.0, wait_until - loop.time()))
                except asyncio.TimeoutError:
                    pass
        raise TimeoutError(f"no STUN response from {addr}")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def peer_socket(pc: RTCPeerConnection) -> tuple[socket.socket, tuple[str, int]]:
    """The UDP socket an aiortc pc uses for its nominated pair, and the server address it sends to.
    Datagrams sent on it come from an address the server has bound to that pc's transport."""
    transceiver = pc.getTransceivers()[0]
    sender_or_receiver = transceiver.receiver if transceiver.receiver.transport else transceiver.sender
    connection = sender_or_receiver.transport.transport.iceGatherer._connection
    pair = connection._nominated[1]
    # A duplicate of its descriptor: the same bound address on either loop (uvloop hands out a pseudo-socket that
    # cannot send, asyncio a wrapper).
    shared = pair.protocol.transport.get_extra_info("socket")
    return socket.socket(shared.family, shared.type, fileno=os.dup(shared.fileno())), pair.remote_addr
