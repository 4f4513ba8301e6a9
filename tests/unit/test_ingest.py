"""The ingest thread (webcall/media/ingest.c via ingest.py) against the Python path it stands in for.

Its two pieces of RTP surgery are twins of rtp.py's, compared on seeded random packets: `wc_rtp_split` of
`split`, `wc_plan_build` of `ExtensionPlan.build(parse_extensions(...))`. Then the thread itself, on a real
MediaPort on 127.0.0.1: a publisher sends SRTP from its own socket, the thread forwards to players with real
SRTP, and what they decrypt must equal what players of the same labels get from the Python path
(`Producer.receive` → `TrackRouter.deliver`); players joining, starting and leaving mid-stream get every
packet once and in order; the transport's close gives the address back to the shared socket.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time

import pylibsrtp
import pytest

from tests.support.deps import missing_dependency
from tests.support.rtpgen import vp8_keyframe_payload as keyframe_payload
from tests.unit.test_fanout_core import PROFILES, PUB_SSRC, Player, packet, vp8
from webcall.media import ingest as ingest_module, port as port_module, router as router_module
from webcall.media.consumer import Consumer
from webcall.media.dtls import DtlsIdentity
from webcall.media.failures import Failure
from webcall.media.fanout import FanoutCore, load_error, load_library
from webcall.media.ingest import MEDIA_LOCK, ffi, plan_struct
from webcall.media.port import MediaPort
from webcall.media.producer import Producer
from webcall.media.router import TrackRouter
from webcall.media.rtp import ExtensionPlan, parse_extensions, split
from webcall.media.srtp import SendBatch, SrtpSession
from webcall.media.transport import TransportState, WebRtcTransport
from webcall.protocol.sdp import EXT_ABS_SEND_TIME, EXT_MID, EXT_TOFFSET, Track
from webcall_bench import procstat

TAG = {"AEAD_AES_128_GCM": 16, "AES_CM_128_HMAC_SHA1_80": 10}  # SRTP's authentication tag, per profile
LIB = load_library()
if LIB is None:
    missing_dependency(f"fan-out core not built (make core): {load_error()}", module_level=True)


# --- the twins ------------------------------------------------------------------------------------------

def random_extension_block(rng: random.Random) -> bytes:
    """A header extension block as publishers send them, and as they should not: one-byte or two-byte form,
    padding between elements, id 15, an unknown profile, a length that overruns."""
    form = rng.random()
    body = b""
    if form < 0.55:
        profile = 0xBEDE
        for _ in range(rng.randrange(0, 6)):
            if rng.random() < 0.1:
                body += b"\x00"
            ext_id = rng.choice([rng.randrange(1, 15), 15]) if rng.random() < 0.05 else rng.randrange(1, 15)
            size = rng.randrange(1, 17)
            body += bytes([(ext_id << 4) | (size - 1)]) + rng.randbytes(size)
    elif form < 0.9:
        profile = 0x1000 | rng.randrange(16)
        for _ in range(rng.randrange(0, 6)):
            if rng.random() < 0.1:
                body += b"\x00"
            size = rng.choice([0, rng.randrange(1, 17), rng.randrange(17, 40)])
            body += bytes([rng.randrange(1, 256), size]) + rng.randbytes(size)
    else:
        profile = rng.randrange(0x10000)
        body = rng.randbytes(rng.randrange(0, 12))
    body += bytes(-len(body) % 4)
    words = len(body) // 4
    if rng.random() < 0.05:
        words += rng.randrange(1, 4)  # claims more than is there
    return struct.pack("!HH", profile, words) + body


def random_rtp(rng: random.Random) -> bytes:
    csrc_count = rng.choice([0, 0, 0, 1, 2, 15])
    extended = rng.random() < 0.8
    padded = rng.random() < 0.15
    b0 = 0x80 | csrc_count | (0x10 if extended else 0) | (0x20 if padded else 0)
    data = bytes([b0, 96]) + rng.randbytes(10) + rng.randbytes(4 * csrc_count)
    if extended:
        data += random_extension_block(rng)
    data += rng.randbytes(rng.randrange(0, 120))
    if padded:
        data += bytes([rng.randrange(0, 40)])
    if rng.random() < 0.1:
        data = data[: rng.randrange(len(data) + 1)]
    return data


def random_plan(rng: random.Random) -> ExtensionPlan:
    mapping = {}
    for _ in range(rng.randrange(0, 6)):
        mapping[rng.choice([rng.randrange(1, 15), rng.randrange(1, 256)])] = rng.choice(
            [rng.randrange(1, 15), rng.randrange(1, 15), rng.randrange(15, 256)])
    mid = None
    if rng.random() < 0.8:
        mid = (rng.choice([rng.randrange(1, 15), rng.randrange(15, 256)]),
               rng.randbytes(rng.choice([1, 2, rng.randrange(1, 17), rng.randrange(17, 30)])))
    return ExtensionPlan(mapping, mid)


def c_split(data: bytes) -> tuple[int, int, int] | None:
    out = ffi.new("int[3]")
    if LIB.wc_rtp_split(data, len(data), out, out + 1, out + 2) != 0:
        return None
    return out[0], out[1], out[2]


def test_split_is_rtp_split() -> None:
    rng = random.Random(7983)
    kinds = {"ok": 0, "malformed": 0}
    for _ in range(5000):
        data = random_rtp(rng)
        try:
            expected = split(data)
        except ValueError:
            expected = None
        assert c_split(data) == expected, data.hex()
        kinds["ok" if expected else "malformed"] += 1
    assert min(kinds.values()) > 200  # both kinds were tried


def test_plan_build_is_extension_plan_build() -> None:
    rng = random.Random(8285)
    out = ffi.new("char[4096]")
    built = forms = 0
    for _ in range(5000):
        data = random_rtp(rng)
        try:
            csrc_end, ext_end, _ = split(data)
        except ValueError:
            continue
        plan = random_plan(rng)
        elements = parse_extensions(data, csrc_end, ext_end) if ext_end > csrc_end else None
        expected = plan.build(elements)
        struct_ = plan_struct(plan)
        assert struct_ is not None
        length = LIB.wc_plan_build(struct_, data, csrc_end, ext_end, out, 4096)
        assert length >= 0
        assert ffi.buffer(out, length)[:] == expected, (data.hex(), plan.mapping, plan.mid)
        built += bool(expected)
        forms += expected[:2] == b"\x10\x00"
    assert built > 1000 and forms > 100  # blocks of both forms were built


def test_a_plan_the_thread_cannot_take_is_refused() -> None:
    assert plan_struct(ExtensionPlan({3: 300}, None)) is None
    assert plan_struct(ExtensionPlan({}, (0, b"x"))) is None
    assert plan_struct(ExtensionPlan({3: 4}, (1, b"v"))) is not None


# --- the thread, on a real port --------------------------------------------------------------------------

class Publisher:
    """The listener of a publisher's transport: its one video track's producer, and the RTCP it got."""

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.rtcp: list[bytes] = []
        self.failed: list[object] = []

    def on_transport_connected(self, now: float) -> None:
        pass

    def on_transport_failed(self, reason: object) -> None:
        self.failed.append(reason)

    def on_rtp(self, data: bytes, now: float) -> None:
        if struct.unpack_from("!I", data, 8)[0] == self.producer.ssrc:
            self.producer.receive(data, now)

    def on_rtcp(self, data: bytes, now: float) -> None:
        self.rtcp.append(data)

    def on_tick(self, now: float) -> None:
        return None


def new_producer() -> Producer:
    track = Track("1", "video", vp8(), {EXT_ABS_SEND_TIME: 2, EXT_TOFFSET: 5, EXT_MID: 4}, PUB_SSRC)
    return Producer(track, send_nack=lambda *a: None, send_keyframe_request=lambda *a: None,
                    on_keyframe=lambda *a: None)


async def until(condition, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def identity() -> DtlsIdentity:
    return DtlsIdentity()


class Setup:
    """A port with ingest threads on, a publisher connected on UDP with an ingest, and its track's router."""

    def __init__(self, port: MediaPort, identity: DtlsIdentity, profile: str) -> None:
        srtp_profile, key_length = PROFILES[profile]
        key = os.urandom(key_length)
        self.port = port
        self.profile = profile
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.tx = pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                                     srtp_profile=srtp_profile))
        self.producer = new_producer()
        self.listener = Publisher(self.producer)
        now = time.monotonic()
        self.transport = WebRtcTransport(port, identity, remote_ufrag="pub", remote_fingerprints=[],
                                         listener=self.listener, connect_timeout=10.0, consent_timeout=30.0,
                                         now=now)
        self.transport.on_binding_request(self.sock.getsockname(), True, now)
        self.transport._rx = SrtpSession(pylibsrtp.Session(pylibsrtp.Policy(
            key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=srtp_profile)))
        self.transport.state = TransportState.CONNECTED  # (keys as DTLS would have made them)
        self.router = TrackRouter(self.producer, core=port.core, batch=port.batch)
        self.ingest = self.transport.start_ingest()
        assert self.ingest is not None
        self.ingest.add_track(self.router)

    def send(self, data: bytes) -> None:
        self.sock.sendto(self.tx.protect(data), ("127.0.0.1", self.port.sock.getsockname()[1]))

    def player(self, extensions: dict[str, int] | None = None) -> tuple[Player, Consumer]:
        player = Player(self.port.sock, self.profile)
        consumer = Consumer(self.producer, Track("v", "video", vp8(), extensions or {EXT_MID: 3, EXT_ABS_SEND_TIME: 6}),
                            player)
        return player, consumer

    def close(self) -> None:
        self.transport.close()
        self.sock.close()


@pytest.fixture
async def setup(identity):
    port = MediaPort(ingest="auto")
    await port.start("127.0.0.1", 0)
    assert port.ingest_enabled and port.core is not None
    made: list[Setup] = []

    def make(profile: str = "AEAD_AES_128_GCM") -> Setup:
        made.append(Setup(port, identity, profile))
        return made[-1]

    yield make
    for s in made:
        s.close()
    await port.stop()
    assert MEDIA_LOCK.users == 0


def stream(first_seq: int, count: int, start_ts: int = 9000) -> list[bytes]:
    """A keyframe, then frames of three packets; one packet in the middle without extensions, one with CSRCs,
    padding and a two-byte block."""
    sent = [packet(first_seq, start_ts, keyframe_payload(700))]
    for i in range(1, count):
        sent.append(packet(first_seq + i, start_ts + 3000 * ((i + 2) // 3), os.urandom(300 + i), marker=i % 3 == 2,
                           ext=i != count // 2))
    odd = bytearray(struct.pack("!BBHII", 0xB1, 96, (first_seq + count) & 0xFFFF, start_ts + 3000 * count, PUB_SSRC))
    odd += b"\x00\x00\x00\x07" + struct.pack("!HH", 0x1000, 2) + bytes([2, 3, 1, 2, 3, 0, 0, 0])
    odd += os.urandom(200) + bytes([0, 0, 3])
    sent.append(bytes(odd))
    return sent


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_the_thread_forwards_what_the_python_path_forwards(setup, sender, profile) -> None:
    s = setup(profile)
    player, consumer = s.player()
    # The twin: a router without an ingest, fed the same plaintext by hand; a player with the same labels.
    twin_producer = new_producer()
    twin_router = TrackRouter(twin_producer, core=FanoutCore(LIB, sender), batch=SendBatch(sender))
    twin_player = Player(sender, profile)
    twin = Consumer(twin_producer, Track("v", "video", vp8(), {EXT_MID: 3, EXT_ABS_SEND_TIME: 6}), twin_player)
    twin.ssrc, twin._next_seq, twin._ts_base = consumer.ssrc, consumer._next_seq, consumer._ts_base
    s.router.attach(consumer, time.monotonic())
    twin_router.attach(twin, time.monotonic())

    sent = stream(4000, 40)
    s.send(sent[0])  # the keyframe starts the player; from the next packet on the thread forwards to it
    await until(lambda: consumer.target is not None)
    for data in sent[1:]:
        s.send(data)
    await until(lambda: s.producer.packets == len(sent))
    for i, data in enumerate(sent):
        twin_producer.receive(data, i / 100)

    got = player.receive(len(sent))
    assert got == twin_player.receive(len(sent))
    assert player.pending() == 0
    counters = s.ingest.counters()
    assert counters["forwarded"] == len(sent) - 1, counters  # all but the keyframe that started the player
    assert counters["srtp_errors"] == 0 and counters["overflow"] == 0
    assert s.transport.rx_packets == len(sent)
    assert s.transport.rx_bytes == sum(len(data) + TAG[profile] for data in sent)  # as sent: the input bitrate
    assert s.producer.lookup(sent[-2][2] << 8 | sent[-2][3]) == sent[-2]  # the ring has them, as Python's path
    assert consumer.target.packets == len(sent) - 1  # the thread's sends count on the player's target


async def test_rtcp_stun_and_bad_srtp_reach_python(setup) -> None:
    s = setup()
    sr = struct.pack("!BBHI", 0x80, 200, 6, PUB_SSRC) + os.urandom(20)
    s.sock.sendto(s.tx.protect_rtcp(sr), ("127.0.0.1", s.port.sock.getsockname()[1]))
    forged = bytearray(s.tx.protect(packet(10, 0, os.urandom(100))))
    forged[-1] ^= 1
    s.sock.sendto(bytes(forged), ("127.0.0.1", s.port.sock.getsockname()[1]))
    await until(lambda: s.listener.rtcp)
    assert s.listener.rtcp == [sr]
    s.ingest.catch_up()
    await until(lambda: (s.ingest.catch_up(), s.transport.srtp_errors)[1] == 1)
    assert s.producer.packets == 0


async def test_players_joining_starting_and_leaving_get_each_packet_once_in_order(setup, monkeypatch) -> None:
    monkeypatch.setattr(router_module, "REPLAY_MAX_PACKETS", 5)  # no replay of the GOP: b waits for a keyframe
    s = setup()
    first, a = s.player()
    second, b = s.player({EXT_MID: 5})  # another layout: a second group
    s.router.attach(a, time.monotonic())
    seq = 100
    ts = 0

    async def send(count: int, keyframe: bool = False) -> None:
        nonlocal seq, ts
        for i in range(count):
            payload = keyframe_payload(400) if keyframe and i == 0 else os.urandom(200)
            s.send(packet(seq, ts, payload, marker=i == count - 1))
            seq += 1
            await asyncio.sleep(0.002)  # paced: the thread and Python interleave as in a server
        ts += 3000

    def seqs(player: Player, count: int) -> list[int]:
        return [struct.unpack_from("!H", data, 2)[0] for data in player.receive(count)]

    await send(3, keyframe=True)
    await send(10)
    await until(lambda: s.producer.packets == 13)
    s.router.attach(b, time.monotonic())  # mid-GOP: b waits for a keyframe, in Python; a stays on the core
    await send(10)
    await send(5, keyframe=True)  # b starts here and joins the thread's groups
    await send(10)
    await until(lambda: s.producer.packets == 38)
    got_a = seqs(first, 38)
    assert got_a == [(got_a[0] + i) & 0xFFFF for i in range(38)]  # every packet once, in order
    got_b = seqs(second, 15)
    assert got_b == [(got_b[0] + i) & 0xFFFF for i in range(15)]
    assert first.pending() == 0 and second.pending() == 0
    s.router.detach(a)
    await send(10)
    await until(lambda: s.producer.packets == 48)
    assert seqs(second, 10) == [(got_b[-1] + 1 + i) & 0xFFFF for i in range(10)]
    assert first.pending() == 0
    assert s.ingest.counters()["forwarded"] >= 20


async def test_closing_the_transport_gives_the_address_back_to_the_port(setup) -> None:
    s = setup()
    s.send(packet(1, 0, os.urandom(50)))
    await until(lambda: s.producer.packets == 1)
    ingest = s.ingest
    s.transport.close()
    assert not ingest.running and s.transport.ingest is None and MEDIA_LOCK.users == 0
    # The thread closes its socket when it leaves, just after: until then the kernel still delivers to it.
    for attempt in range(100):
        dropped = s.port.dropped
        s.send(packet(2 + attempt, 0, os.urandom(50)))
        await asyncio.sleep(0.02)
        if s.port.dropped > dropped:
            break  # the shared socket has the address's datagrams again, and nobody claims them
    assert s.port.dropped == dropped + 1
    assert s.producer.packets == 1


def thread_counters(ingest) -> dict[str, int]:
    """The thread's counters now (Ingest.counters() holds them as of the last drain)."""
    out = ffi.new("uint64_t[10]")
    ingest.lib.wc_ingest_counters(ingest.handle, out)
    return dict(zip(ingest_module._COUNTERS, out))


async def test_without_players_python_is_woken_for_the_first_packet_then_by_the_tick(setup, monkeypatch) -> None:
    monkeypatch.setattr(ingest_module, "BATCH", 5.0)  # a batch that cannot come due during the test
    s = setup()
    s.send(packet(200, 0, os.urandom(200)))
    await until(lambda: s.producer.packets == 1)  # the track's first packet wakes Python (the publication starts)
    assert thread_counters(s.ingest)["wakes"] == 1
    for i in range(1, 30):
        s.send(packet(200 + i, 3000 * i, os.urandom(200)))
    await until(lambda: thread_counters(s.ingest)["queued"] == 30)
    await until(lambda: s.producer.packets == 30)  # taken in by the port, every TAKE_IN_INTERVAL
    assert thread_counters(s.ingest)["wakes"] == 1  # no player waits for these packets: no wake-up of their own
    assert s.ingest.counters()["forwarded"] == 0


async def without_ticks(monkeypatch) -> None:
    """No batch and no port tick comes due during the test: only the thread's own wake-ups drain a queue."""
    monkeypatch.setattr(ingest_module, "BATCH", 5.0)
    monkeypatch.setattr(port_module, "TAKE_IN_INTERVAL", 5.0)
    await asyncio.sleep(0.3)  # the take-in due now was the last


def test_the_queue_size_is_the_threads() -> None:
    """QUEUE (what Python expects to wake it) is ingest.c's WC_INGEST_QUEUE."""
    lib = load_library()
    assert lib is not None and ingest_module.QUEUE == lib.wc_ingest_queue_size()


def test_the_thread_waits_for_python_longer_than_the_ports_longest_take_in_gap() -> None:
    """BATCH is a backstop behind the port's take-ins (ingest.py cannot import port.py, which imports it): were it
    shorter than the longest gap of the take-in grid, the thread would wake Python between take-ins."""
    assert ingest_module.BATCH > port_module.MAX_TAKE_IN_GAP


async def test_a_queue_half_full_wakes_python(setup, monkeypatch) -> None:
    await without_ticks(monkeypatch)
    s = setup()
    s.send(packet(300, 0, os.urandom(200)))
    await until(lambda: s.producer.packets == 1)  # (the track's first packet wakes Python)
    for i in range(1, ingest_module.QUEUE // 2 + 10):
        s.send(packet(300 + i, 3000 * i, os.urandom(200)))
    await until(lambda: s.producer.packets >= 1 + ingest_module.QUEUE // 2)
    assert thread_counters(s.ingest)["wakes"] == 2 and thread_counters(s.ingest)["overflow"] == 0


async def test_a_queued_packet_wakes_python_when_its_batch_is_due_even_if_none_follows(setup, monkeypatch) -> None:
    """The thread's wait for the next datagram is bounded (ingest.c, RECV_TIMEOUT_MS), so a batch comes due on
    time when the publisher falls silent; with the port's take-ins five seconds apart, only the thread's own
    wake-up brings the last packet in."""
    await without_ticks(monkeypatch)
    monkeypatch.setattr(ingest_module, "BATCH", 0.3)
    s = setup()
    s.send(packet(400, 0, os.urandom(200)))
    await until(lambda: s.producer.packets == 1)  # (the track's first packet wakes Python)
    s.send(packet(401, 3000, os.urandom(200)))
    await until(lambda: thread_counters(s.ingest)["queued"] == 2)
    queued = time.monotonic()
    await until(lambda: s.producer.packets == 2, timeout=2.0)
    assert time.monotonic() - queued < 0.3 + 0.1 + 0.3  # the batch, the longest recv wait, the loop's scheduling
    assert thread_counters(s.ingest)["wakes"] == 2


async def test_a_publisher_that_moves_is_read_by_the_event_loop_again(setup) -> None:
    s = setup()
    s.send(packet(1, 0, os.urandom(50)))
    await until(lambda: s.producer.packets == 1)
    ingest = s.ingest
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    s.transport.on_binding_request(moved.getsockname(), True, time.monotonic())  # nominated: the path moves
    assert not ingest.running and s.transport.ingest is None and s.transport.addr == moved.getsockname()
    moved.sendto(s.tx.protect(packet(2, 3000, os.urandom(50))), ("127.0.0.1", s.port.sock.getsockname()[1]))
    await until(lambda: s.producer.packets == 2)  # through the shared socket and Python's unprotect
    moved.close()


async def test_a_prompt_reader_is_woken_for_each_packet_a_batched_one_is_not(setup, monkeypatch) -> None:
    await without_ticks(monkeypatch)
    s = setup()
    recorded: list[bytes] = []
    s.router.add_reader(lambda data, keyframe: recorded.append(data), batched=True)  # a recording, say
    s.send(packet(1, 0, os.urandom(80)))
    await until(lambda: len(recorded) == 1)  # the track's first packet wakes Python
    s.send(packet(2, 0, os.urandom(80)))
    await until(lambda: thread_counters(s.ingest)["queued"] == 2)
    await asyncio.sleep(0.05)
    assert thread_counters(s.ingest)["wakes"] == 1 and len(recorded) == 1  # it waits for the batch

    relayed: list[bytes] = []
    s.router.add_reader(lambda data, keyframe: relayed.append(data))  # a relay to another worker, say
    s.send(packet(3, 0, os.urandom(80)))
    await until(lambda: len(relayed) == 2)  # woken by the packet: both queued packets are taken in
    assert thread_counters(s.ingest)["wakes"] == 2 and len(recorded) == 3


async def test_a_reader_that_leaves_gets_what_arrived_before(setup, monkeypatch) -> None:
    await without_ticks(monkeypatch)
    s = setup()
    recorded: list[bytes] = []
    reader = recorded.append
    s.router.add_reader(lambda data, keyframe: reader(data), batched=True)
    s.send(packet(10, 0, os.urandom(80)))
    await until(lambda: len(recorded) == 1)  # the first packet woke Python
    for i in range(1, 4):
        s.send(packet(10 + i, 0, os.urandom(80)))
    await until(lambda: thread_counters(s.ingest)["queued"] == 4)
    assert len(recorded) == 1  # the others wait for the batch
    s.router.remove_reader(s.router.readers[0])  # a recording that stops: its last packets are in the file
    assert len(recorded) == 4


async def test_the_ring_read_from_outside_takes_the_queue_in_first(setup, monkeypatch) -> None:
    """A feed or a snapshot starts from the ring (`current_gop`, `recent`): what the thread still holds is in it."""
    await without_ticks(monkeypatch)
    s = setup()
    s.send(packet(20, 0, os.urandom(80)))
    await until(lambda: s.producer.packets == 1)  # the first packet woke Python
    sent = [packet(21, 3000, keyframe_payload(300))] + [packet(21 + i, 3000, os.urandom(90)) for i in range(1, 5)]
    for data in sent:
        s.send(data)
    await until(lambda: thread_counters(s.ingest)["queued"] == 6)
    assert s.producer.packets == 1  # queued, not taken in: no player waits for them
    gop = s.producer.current_gop()
    assert gop is not None and [seq for seq, _ in gop] == [21, 22, 23, 24, 25]
    assert [seq for seq, _ in s.producer.recent(3)] == [23, 24, 25]


BYE = struct.pack("!BBHI", 0x81, 203, 1, PUB_SSRC)


def queue_a_hang_up(s: Setup) -> list[bytes]:
    """An RTCP packet the thread queues and Python has not taken in yet; taking it in fails the transport, as
    the peer's DTLS close_notify does (`fail(PEER_CLOSED)`). Returns what the listener will have taken in."""
    ended: list[bytes] = []

    def peer_hangs_up(data: bytes, now: float) -> None:
        ended.append(data)
        s.transport.fail(Failure.PEER_CLOSED)

    s.listener.on_rtcp = peer_hangs_up
    queued = thread_counters(s.ingest)["queued"]
    s.sock.sendto(s.tx.protect_rtcp(BYE), ("127.0.0.1", s.port.sock.getsockname()[1]))
    deadline = time.monotonic() + 3
    while thread_counters(s.ingest)["queued"] == queued:  # no await: the event loop cannot take it in first
        assert time.monotonic() < deadline, "the thread did not queue the packet"
        time.sleep(0.001)
    return ended


async def test_a_queued_packet_that_ends_the_transport_during_its_close(setup) -> None:
    """Seen with Firefox: unPublishStream closes the transport while the peer's DTLS close_notify waits in the
    thread's queue. The close takes the queue in first, the close_notify fails the transport from inside that
    close, and the close must still finish once, without an exception."""
    s = setup()
    s.send(packet(1, 0, os.urandom(50)))
    await until(lambda: s.producer.packets == 1)
    ingest = s.ingest
    ended = queue_a_hang_up(s)
    s.transport.close()
    assert ended == [BYE]  # taken in by the close
    assert not ingest.running and s.transport.state == TransportState.CLOSED and MEDIA_LOCK.users == 0
    assert s.listener.failed == []  # the owner closed it: nobody is told of a failure


async def test_a_queued_packet_that_ends_the_transport_when_the_path_changes(setup) -> None:
    """The same hang-up taken in by the stop of a path change: the transport fails once and stays closed."""
    s = setup()
    s.send(packet(1, 0, os.urandom(50)))
    await until(lambda: s.producer.packets == 1)
    ingest = s.ingest
    ended = queue_a_hang_up(s)
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.bind(("127.0.0.1", 0))
    s.transport.on_binding_request(moved.getsockname(), True, time.monotonic())  # nominated: the path moves
    moved.close()
    assert ended == [BYE]
    assert not ingest.running and s.transport.state == TransportState.CLOSED and MEDIA_LOCK.users == 0
    assert s.listener.failed == [Failure.PEER_CLOSED]
    assert s.port.by_addr == {}, s.port.by_addr  # neither address is bound to the closed transport


async def test_a_player_joining_as_the_publisher_hangs_up(setup) -> None:
    """A player's attach takes the queue in first (`catch_up`); when that is the publisher's hang-up, the
    publication ends inside the attach (its router closes), and the player must not be added to it."""
    s = setup()
    s.send(packet(1, 0, keyframe_payload(300)))
    await until(lambda: s.producer.packets == 1)
    ended = queue_a_hang_up(s)
    s.listener.on_transport_failed = lambda reason: s.router.close()  # as the publication's end does
    _, consumer = s.player()
    s.router.attach(consumer, time.monotonic())
    assert ended == [BYE] and s.router.closed and s.router.consumers == []
    assert s.transport.state == TransportState.CLOSED and s.transport.ingest is None and MEDIA_LOCK.users == 0


async def test_the_thread_is_named_for_what_it_does(setup) -> None:
    # top -H and the bench's per-thread CPU (procstat.threads, read here) tell it from the event loop by name
    def named() -> set[int]:
        return {tid for tid, (kind, _) in procstat.threads(os.getpid()).items() if kind == "ingest threads"}

    before = named()  # (earlier tests' threads may still be on their way out: they leave, none comes)
    s = setup()
    s.send(packet(300, 0, os.urandom(200)))
    await until(lambda: s.producer.packets == 1)
    assert len(named() - before) == 1  # this publisher's thread
