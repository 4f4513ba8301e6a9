"""The compiled fan-out core (webcall/media/fanout.c via fanout.py) against the Python forwarding path.

Two players with identical labels (SSRC, offsets, extension layout) take the same publisher packets, one
through `wc_fanout`, one through `Consumer.forward`; each sends real SRTP to its own UDP socket on
127.0.0.1. Both are decrypted with the players' own keys and must be byte-identical. Header fields are
also checked with `struct`, independently of webcall's RTP helpers.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import time
from types import SimpleNamespace

import pylibsrtp
import pytest

from tests.support.deps import missing_dependency
from tests.support.rtpgen import vp8_keyframe_payload as keyframe_payload
from webcall.media.consumer import Consumer
from webcall.media.fanout import SEND_CAPACITY, SPLIT_MIN, FanoutCore, load_error, load_library, new_core
from webcall.media.producer import Producer
from webcall.media.router import TrackRouter
from webcall.media.srtp import SendBatch, SrtpSession, abi_ffi, pack_sockaddr, sockaddr
from webcall.media.transport import WebRtcTransport
from webcall.protocol.sdp import EXT_ABS_SEND_TIME, EXT_MID, EXT_TOFFSET, Codec, Track
from webcall_bench import procstat

LIB = load_library()
if LIB is None:
    missing_dependency(f"fan-out core not built (make core): {load_error()}", module_level=True)

PROFILES = {
    "AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AES_CM_128_HMAC_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
}
PUB_SSRC = 0x01020304


class Player:
    """A transport's send half with real SRTP, a real UDP socket to receive on, and the matching keys."""

    def __init__(self, sock: socket.socket, profile: str) -> None:
        srtp_profile, key_length = PROFILES[profile]
        key = os.urandom(key_length)
        self.port = SimpleNamespace(sock=sock)
        self.tx = SrtpSession(pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=srtp_profile)))
        self._rx = pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=srtp_profile))
        self.inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inbox.bind(("127.0.0.1", 0))
        self.inbox.settimeout(2)
        self.addr = None
        self.sockaddr = None
        self.link = None  # a UDP path (an ICE-TCP one is served in Python: media/tcp.py)
        self.ingest = None  # a player has no ingest thread (media/ingest.py)
        self.state = "new"
        self.send_errors = 0
        self.move_to(self.inbox.getsockname())
        self.send_rtp = WebRtcTransport.send_rtp.__get__(self)
        self.send_protected = WebRtcTransport.send_protected.__get__(self)
        self.send_raw = WebRtcTransport.send_raw.__get__(self)
        self._send_to = WebRtcTransport._send_to.__get__(self)

    def move_to(self, addr) -> None:
        WebRtcTransport._send_to(self, addr)

    def receive(self, count: int) -> list[bytes]:
        return [self._rx.unprotect(self.inbox.recv(2048)) for _ in range(count)]

    def pending(self) -> int:
        self.inbox.setblocking(False)
        n = 0
        try:
            while True:
                self.inbox.recv(2048)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.inbox.settimeout(2)


def vp8(rtx: bool = False) -> Codec:
    return Codec("VP8", 96, 90000, None, "", ("nack", "nack pli"), 97 if rtx else None)


def packet(seq: int, ts: int, payload: bytes, marker: bool = False, ext: bool = True) -> bytes:
    header = struct.pack("!BBHII", 0x90 if ext else 0x80, (0x80 if marker else 0) | 96, seq & 0xFFFF, ts, PUB_SSRC)
    if ext:  # abs-send-time (id 2, 3 bytes) and toffset (id 5, 3 bytes), one-byte form
        header += struct.pack("!HH", 0xBEDE, 2) + bytes([0x22, 1, 2, 3, 0x52, 0, 0, 9])
    return header + payload


def make_players(sock: socket.socket, profile: str, extensions: dict[str, int], count: int, threads: int = 1):
    """A producer with the core, and `count` attached players with real SRTP and their own sockets."""
    track = Track("1", "video", vp8(), {EXT_ABS_SEND_TIME: 2, EXT_TOFFSET: 5, EXT_MID: 4}, PUB_SSRC)
    producer = Producer(track, send_nack=lambda *a: None, send_keyframe_request=lambda *a: None,
                        on_keyframe=lambda *a: None)
    router = TrackRouter(producer, core=FanoutCore(LIB, sock, threads), batch=SendBatch(sock))
    players = [Player(sock, profile) for _ in range(count)]
    consumers = [Consumer(producer, Track("v", "video", vp8(), extensions), p) for p in players]
    return router, players, consumers


class PythonOnlyConsumer(Consumer):
    """A consumer that never moves to the compiled core: the Python twin of the comparison."""

    __slots__ = ()

    def promote(self, core) -> bool:
        return False


def make_pair(sock: socket.socket, profile: str, extensions: dict[str, int]):
    router, players, consumers = make_players(sock, profile, extensions, 2)
    # The same labels for both, so their decrypted output must be identical.
    twin = consumers[1]
    twin.ssrc, twin._next_seq, twin._ts_base = consumers[0].ssrc, consumers[0]._next_seq, consumers[0]._ts_base
    for consumer in consumers:
        router.attach(consumer, 0.0)
    return router, players, consumers


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_core_output_is_identical_to_python_output(sender, profile):
    extensions = {EXT_MID: 3, EXT_ABS_SEND_TIME: 6}
    router, (p_core, p_py), (c_core, c_py) = make_pair(sender, profile, extensions)
    # Only the first consumer may use the core: the second one stays in Python.
    c_py.__class__ = PythonOnlyConsumer

    sent = [packet(1000, 5000, keyframe_payload(900))]
    sent += [packet(1000 + i, 5000 + 3000 * (i // 3), os.urandom(700 + i), marker=i % 3 == 2) for i in range(1, 40)]
    sent.append(packet(1040, 200000, os.urandom(1100), ext=False))
    for i, data in enumerate(sent):
        router.producer.receive(data, i / 100)
        if i == 0:
            assert c_core.target is not None, "the started consumer was promoted to the core"
            assert c_py.target is None

    got_core = p_core.receive(len(sent))
    got_py = p_py.receive(len(sent))
    assert got_core == got_py
    assert p_core.pending() == 0 and p_py.pending() == 0

    # Independent check of the labels: continuous sequence, shifted timestamps, our SSRC and payload type.
    first_seq, first_ts = struct.unpack_from("!HI", got_core[0], 2)
    for data, original in zip(got_core, sent):
        b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
        o_b1, o_seq, o_ts = struct.unpack_from("!BHI", original, 1)
        assert ssrc == c_core.ssrc and b1 & 0x7F == 96 and b1 & 0x80 == o_b1 & 0x80
        assert seq == (first_seq + o_seq - 1000) & 0xFFFF
        assert ts == (first_ts + o_ts - 5000) & 0xFFFFFFFF
        ext_words = struct.unpack_from("!H", data, 14)[0]
        body = data[16 + 4 * ext_words:]
        o_ext_words = struct.unpack_from("!H", original, 14)[0] if original[0] & 0x10 else -1
        assert body == original[16 + 4 * o_ext_words:] if o_ext_words >= 0 else body == original[12:]
        assert b0 & 0x10  # the player's mid extension is always there
    assert c_core.packets == c_py.packets == len(sent)
    assert c_core.octets == c_py.octets > 0
    assert router.core.dropped == 0


def test_core_skips_late_and_oversized_packets_and_follows_a_moved_peer(sender):
    router, (player, other), (consumer, second) = make_pair(sender, "AEAD_AES_128_GCM", {EXT_MID: 3})
    router.detach(second)  # one player is enough here
    router.producer.receive(packet(500, 0, keyframe_payload(500)), 0.0)
    router.producer.receive(packet(501, 0, os.urandom(500), marker=True), 0.01)
    assert consumer.target is not None
    assert len(player.receive(2)) == 2

    router.producer.receive(packet(499, 0, os.urandom(100)), 0.02)  # from before this player started
    router.producer.receive(packet(502, 3000, os.urandom(1500)), 0.03)  # too long once protected
    assert player.pending() == 0
    assert consumer.target.dropped == 1 and consumer.packets == 2

    # The peer moves (ICE nomination): the transport rewrites its address in place, the core follows.
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    moved.settimeout(2)
    before = player.sockaddr
    player.move_to(moved.getsockname())
    assert player.sockaddr is before and bytes(abi_ffi.buffer(before)) == pack_sockaddr(moved.getsockname())
    router.producer.receive(packet(503, 6000, os.urandom(300)), 0.04)
    data = player._rx.unprotect(moved.recv(2048))
    assert struct.unpack_from("!I", data, 8)[0] == consumer.ssrc
    assert player.pending() == 0
    moved.close()


def test_detached_player_gets_nothing_more(sender):
    router, (p1, p2), (c1, c2) = make_pair(sender, "AEAD_AES_128_GCM", {EXT_MID: 3})
    router.producer.receive(packet(10, 0, keyframe_payload(200)), 0.0)
    assert c1.target is not None and c2.target is not None
    assert len(p1.receive(1)) == len(p2.receive(1)) == 1
    router.detach(c2)
    for i in range(1, 5):
        router.producer.receive(packet(10 + i, 3000 * i, os.urandom(200)), i / 100)
    assert len(p1.receive(4)) == 4
    assert p2.pending() == 0
    assert c2.packets == 1  # its counters survive the detach (the streams layer reads them afterwards)


def test_sockaddr_is_ipv4_only():
    assert sockaddr(("::1", 5000)) is None
    assert pack_sockaddr(("127.0.0.1", 5000))[2:4] == struct.pack("!H", 5000)


@pytest.mark.parametrize(("count", "threads"), [
    (SPLIT_MIN + 11, 2),  # split over the helper thread
    (2 * SEND_CAPACITY + 5, 1),  # three sendmmsg calls, the send slots reused twice
    (2 * SEND_CAPACITY + 5, 2),  # each thread reuses its own slots
], ids=["helper-thread", "slots-reused", "both"])
def test_a_big_fanout_gives_every_player_every_packet_under_its_own_key(sender, count, threads):
    router, players, consumers = make_players(sender, "AEAD_AES_128_GCM", {EXT_MID: 3}, count, threads=threads)
    core = router.core
    assert core.threads == threads
    for consumer in consumers:
        router.attach(consumer, 0.0)
    sent = [packet(7000, 0, keyframe_payload(600))] + [packet(7000 + i, 3000 * i, os.urandom(500 + i))
                                                       for i in range(1, 20)]
    for i, data in enumerate(sent):
        router.producer.receive(data, i / 100)
    # the first packet went through Python (promotion)
    assert core.split_fanouts == (len(sent) - 1 if threads == 2 else 0)
    for player, consumer in zip(players, consumers):
        got = player.receive(len(sent))
        seqs = [struct.unpack_from("!H", d, 2)[0] for d in got]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(sent))]
        assert {struct.unpack_from("!I", d, 8)[0] for d in got} == {consumer.ssrc}
        assert [d[-len(o) + 16 + 4 * 2:] for d, o in zip(got[1:], sent[1:])] == [o[16 + 4 * 2:] for o in sent[1:]]
        assert player.pending() == 0
    assert core.dropped == 0 and core.sent == (len(sent) - 1) * len(players)
    for player in players:
        player.inbox.close()


def test_the_helper_thread_is_named_for_what_it_does() -> None:
    # top -H and the bench's per-thread CPU (procstat.threads, read here) tell it apart by name
    def helpers() -> int:
        return [kind for kind, _ in procstat.threads(os.getpid()).values()].count("fan-out helpers")

    gc.collect()  # the cores earlier tests left to the collector stop their helpers now, not during this test
    before = helpers()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        core = new_core(sock, "c", threads=2)
        assert core is not None and core.threads == 2
        deadline = time.monotonic() + 5
        while helpers() == before and time.monotonic() < deadline:  # it names itself as it starts
            time.sleep(0.01)
        assert helpers() == before + 1
        del core
        gc.collect()
        deadline = time.monotonic() + 5
        while helpers() > before and time.monotonic() < deadline:  # freeing the sender stops it
            time.sleep(0.01)
        assert helpers() == before
