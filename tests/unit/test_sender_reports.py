"""Players' sender reports built by the compiled core (media/reports.py, fanout.c "Sender reports") against the ones
`PlayerEndpoint.on_tick` builds in Python.

One player with an audio and a video track, both on the core after real forwarding (the first packets in Python,
a GOP replay's worth, then the core): the core's compound SR, received on a UDP socket on 127.0.0.1, decrypts with
the player's key to the very bytes the Python path builds for the same instant, and is the very datagram a twin
session with the same key protects them to. The fields are also read back with aiortc's RTCP parser.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pylibsrtp
from aiortc.rtp import RtcpPacket, RtcpSrPacket

from tests.support.deps import missing_dependency
from tests.support.rtpgen import vp8_keyframe_payload
from webcall.media.consumer import Consumer
from webcall.media.endpoints import _SR_HEADER
from webcall.media.fanout import FanoutCore, load_error, load_library
from webcall.media.port import TAKE_IN_INTERVAL, MediaPort
from webcall.media.producer import Producer
from webcall.media.reports import SenderReports
from webcall.media.router import TrackRouter
from webcall.media.srtp import SendBatch, SrtpSession, abi_ffi, pack_sockaddr
from webcall.protocol.sdp import Codec, Track

LIB = load_library()
if LIB is None:
    missing_dependency(f"fan-out core not built (make core): {load_error()}", module_level=True)

KEY = bytes(range(28))  # AEAD_AES_128_GCM: 16-byte key + 12-byte salt
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
INTERVAL = (0.5, 1.3)
VIDEO = Codec("VP8", 96, 90000, None, "", ("nack", "nack pli"), None)
AUDIO = Codec("opus", 111, 48000, 2, "", (), None)
SSRCS = {"video": 0x0A0B0C0D, "audio": 0x01020304}


def session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=direction, srtp_profile=PROFILE))


class Transport:
    """A player's send half: a real SRTP session and a real UDP socket on 127.0.0.1 to receive on."""

    def __init__(self, sock: socket.socket) -> None:
        self.port = type("Port", (), {"sock": sock})()
        self.tx = SrtpSession(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
        self.rx = session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inbox.bind(("127.0.0.1", 0))
        self.inbox.settimeout(2)
        self.addr = self.inbox.getsockname()
        self.sockaddr = abi_ffi.new("char[16]", pack_sockaddr(self.addr))
        self.link = None
        self.ingest = None
        self.send_errors = 0

    def drain(self) -> list[bytes]:
        """Every datagram waiting (the media the player was sent)."""
        self.inbox.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.inbox.recv(2048))
        except BlockingIOError:
            return out
        finally:
            self.inbox.settimeout(2)


def rtp(kind: str, seq: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
    pt = VIDEO.payload_type if kind == "video" else AUDIO.payload_type
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, SSRCS[kind]) + payload


def player_on_core(sock: socket.socket, audio_packets: int = 20):
    """A player of an audio and a video track, forwarded to through real routers until both are on the core."""
    core = FanoutCore(LIB, sock)
    transport = Transport(sock)
    routers, consumers = {}, []
    for kind, codec in (("video", VIDEO), ("audio", AUDIO)):
        producer = Producer(Track("0" if kind == "video" else "1", kind, codec, {}, SSRCS[kind]),
                            send_nack=lambda *a: None, send_keyframe_request=lambda *a: None,
                            on_keyframe=lambda *a: None)
        routers[kind] = TrackRouter(producer, core=core, batch=SendBatch(sock))
        consumer = Consumer(producer, Track("v" if kind == "video" else "a", kind, codec, {}), transport)
        consumers.append(consumer)
    now = time.monotonic()
    for consumer in consumers:
        routers[consumer.kind].attach(consumer, now)
    video, audio = routers["video"].producer, routers["audio"].producer
    for i in range(12):
        video.receive(rtp("video", 100 + i, 9000 * (i // 4), vp8_keyframe_payload(900) if i == 0 else os.urandom(600 + i),
                          marker=i % 4 == 3), now - 0.5 + i * 0.03)
    for i in range(audio_packets):
        audio.receive(rtp("audio", 7 + i, 960 * i, os.urandom(80 + i % 7)), now - 0.5 + i * 0.02)
    transport.drain()
    return core, transport, consumers, routers


def python_compound(consumers: list[Consumer], now: float, ntp: int) -> bytes:
    """What PlayerEndpoint.on_tick sends, before SRTCP."""
    return b"".join(_SR_HEADER + body for c in consumers if (body := c.sender_report(now, ntp)) is not None)


def test_core_reports_are_the_python_reports_byte_for_byte(sender):
    core, transport, consumers, _ = player_on_core(sender)
    assert all(c.target is not None for c in consumers), "both tracks are on the core"
    assert all(c.sent_in_python[0] > 0 for c in consumers), "some packets went out in Python first"
    assert all(c.target.packets > 0 for c in consumers), "and the rest through the core"
    reports = SenderReports(core, sender, INTERVAL, 0.005)
    now = time.monotonic()
    assert reports.take("player", transport.tx, transport.sockaddr, consumers, now)

    assert reports.run(now) == 1
    datagram = transport.inbox.recv(2048)
    plain = transport.rx.unprotect_rtcp(datagram)
    ntp = struct.unpack_from("!Q", plain, 8)[0]
    assert plain == python_compound(consumers, now, ntp)
    twin = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    assert twin.protect_rtcp(plain) == datagram

    parsed = RtcpPacket.parse(plain)
    assert [type(p) for p in parsed] == [RtcpSrPacket, RtcpSrPacket]
    for packet, consumer in zip(parsed, consumers):
        assert packet.ssrc == consumer.ssrc
        assert packet.sender_info.packet_count == consumer.packets
        assert packet.sender_info.octet_count == consumer.octets
        assert packet.sender_info.ntp_timestamp == ntp
    assert reports.reports == 1 and reports.dropped == 0


def test_next_report_is_drawn_within_the_interval_and_stops_when_dropped(sender):
    core, transport, consumers, _ = player_on_core(sender)
    reports = SenderReports(core, sender, INTERVAL, 0.005)
    start = time.monotonic()
    assert reports.take("player", transport.tx, transport.sockaddr, consumers, start + 0.2)
    assert reports.run(start) == 0, "not due yet"
    assert reports.run(start + 0.196) == 1, "due within the slack"
    sent_at = start + 0.196
    # 1.39 s: past the longest interval; two short ones in a row (each drawn from INTERVAL) may also fit.
    due = {step: reports.run(sent_at + step / 100) for step in range(1, 140)}
    fired = [step for step, sent in due.items() if sent]
    assert fired and all(due[step] == 1 for step in fired), due
    assert INTERVAL[0] <= fired[0] / 100 <= INTERVAL[1] + 0.01, fired
    assert all(INTERVAL[0] <= (b - a) / 100 for a, b in zip(fired, fired[1:])), ("one report per interval", fired)
    reports.drop("player")
    assert len(reports) == 0 and reports.run(sent_at + 10) == 0
    assert reports._clocks == {}, "the tracks' clocks are released with their last player"
    assert len(transport.drain()) == 1 + len(fired)


def test_intervals_are_random_not_fixed(sender):
    core, transport, consumers, _ = player_on_core(sender)
    reports = SenderReports(core, sender, INTERVAL, 0.0)
    t = time.monotonic()
    assert reports.take("player", transport.tx, transport.sockaddr, consumers, t)
    times = []
    for step in range(2000):  # 20 s in 10 ms steps
        if reports.run(t + step / 100):
            times.append(step / 100)
    intervals = [b - a for a, b in zip(times, times[1:])]
    assert len(intervals) >= 12
    assert all(INTERVAL[0] <= i <= INTERVAL[1] + 0.01 for i in intervals), intervals
    assert max(intervals) - min(intervals) > 0.2, intervals
    assert 0.75 <= sum(intervals) / len(intervals) <= 1.05


def test_a_track_without_a_clock_is_left_out_as_in_python(sender):
    core, transport, consumers, routers = player_on_core(sender)
    audio = routers["audio"].producer
    audio.last_arrival = 0.0  # as if the audio track had no time mapping yet (no packet, no SR)
    reports = SenderReports(core, sender, INTERVAL, 0.005)
    now = time.monotonic()
    assert audio.rtp_time_at(now) is None
    assert reports.take("player", transport.tx, transport.sockaddr, consumers, now)
    assert reports.run(now) == 1
    plain = transport.rx.unprotect_rtcp(transport.inbox.recv(2048))
    assert len(plain) == 28 and plain == python_compound(consumers, now, struct.unpack_from("!Q", plain, 8)[0])


def test_a_player_not_all_on_the_core_keeps_its_reports(sender):
    core, transport, consumers, _ = player_on_core(sender)
    reports = SenderReports(core, sender, INTERVAL, 0.005)
    video, audio = consumers
    fresh = Consumer(video.producer, Track("v", "video", VIDEO, {}), transport)  # not started: no target
    assert not reports.take("a", transport.tx, transport.sockaddr, [fresh, audio], 0.0)
    assert not reports.take("b", None, transport.sockaddr, consumers, 0.0)
    assert not reports.take("c", transport.tx, None, consumers, 0.0)
    assert len(reports) == 0
    assert reports.take("d", transport.tx, transport.sockaddr, consumers, 0.0)
    assert not reports.take("d", transport.tx, transport.sockaddr, consumers, 0.0), "already taken"


async def test_the_port_sends_the_reports_it_took_on_its_take_in_grid():
    """With no ingest thread and no transport due, a player's reports alone keep the port's take-in grid."""
    port = MediaPort(fanout_core="c")
    await port.start("127.0.0.1", 0)
    try:
        assert port.reports is not None and not port._on_grid()
        _, transport, consumers, _ = player_on_core(port.sock)
        taken = time.monotonic()
        assert port.take_reports("player", transport.tx, transport.sockaddr, consumers, taken)
        assert port._on_grid()
        datagram = await asyncio.wait_for(asyncio.to_thread(transport.inbox.recv, 2048), 2.0)
        assert time.monotonic() - taken <= 2 * TAKE_IN_INTERVAL + 0.05, "sent on the next take-in"
        plain = transport.rx.unprotect_rtcp(datagram)
        assert [type(p) for p in RtcpPacket.parse(plain)] == [RtcpSrPacket, RtcpSrPacket]
        assert port.core_reports == 1
        port.drop_reports("player")
        assert not port._on_grid()
    finally:
        await port.stop()
