"""Producer → Consumer forwarding without sockets (webcall/media/producer.py, consumer.py).

Real VP8 RTP (aiortc's encoder and packetizer) goes into a real Producer; Consumers write into a
FakeTransport that only records packets. Output packets are parsed here with `struct`, independently
of webcall's RTP helpers.
"""

from __future__ import annotations

import fractions
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from tests.support.rtpgen import vp8_descriptor_length
from webcall.media.consumer import Consumer
from webcall.media.router import TrackRouter
from webcall.media.producer import (
    KEYFRAME_MIN_INTERVAL,
    MAX_NACK_BATCH,
    NACK_RETRIES,
    NACK_RETRY_INTERVAL,
    SR_WAIT,
    Producer,
)
from webcall.protocol.sdp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_TOFFSET,
    EXT_VIDEO_ORIENTATION,
    Codec,
    Track,
)

# --------------------------------------------------------------------------------------------------
# tracks

PUB_SSRC, PUB_RTX_SSRC = 0x11223344, 0x55667788
VP8_PT, VP8_RTX_PT = 96, 97
OPUS_PT = 111
# publisher's extension ids (as Chromium numbers them)
PUB_AUDIO_LEVEL, PUB_ABS_SEND_TIME, PUB_MID, PUB_TOFFSET = 1, 2, 4, 14

PLAYER_VP8_PT, PLAYER_RTX_PT = 120, 124
PLAYER_MID_ID, PLAYER_ABS_ID, PLAYER_TOFFSET_ID, PLAYER_AUDIO_LEVEL_ID = 3, 6, 5, 10


def vp8_track(rtx: bool = True, nack: bool = True) -> Track:
    fb = ("goog-remb", "ccm fir") + (("nack", "nack pli") if nack else ("nack pli",))
    codec = Codec("VP8", VP8_PT, 90000, None, "", fb, VP8_RTX_PT if rtx else None)
    extensions = {EXT_ABS_SEND_TIME: PUB_ABS_SEND_TIME, EXT_TOFFSET: PUB_TOFFSET, EXT_MID: PUB_MID}
    return Track("1", "video", codec, extensions, PUB_SSRC, PUB_RTX_SSRC if rtx else None)


def opus_track() -> Track:
    codec = Codec("opus", OPUS_PT, 48000, 2, "minptime=10;useinbandfec=1", ())
    return Track("0", "audio", codec, {EXT_AUDIO_LEVEL: PUB_AUDIO_LEVEL, EXT_MID: PUB_MID}, PUB_SSRC + 1)


def player_video_track(rtx: bool = True, mid: str = "v1", extensions: dict[str, int] | None = None) -> Track:
    codec = Codec("VP8", PLAYER_VP8_PT, 90000, None, "", ("nack", "nack pli", "ccm fir"),
                  PLAYER_RTX_PT if rtx else None)
    if extensions is None:
        extensions = {EXT_MID: PLAYER_MID_ID, EXT_ABS_SEND_TIME: PLAYER_ABS_ID, EXT_TOFFSET: PLAYER_TOFFSET_ID,
                      EXT_VIDEO_ORIENTATION: 13}
    return Track(mid, "video", codec, extensions)


def player_audio_track(mid: str = "a0") -> Track:
    codec = Codec("opus", 109, 48000, 2, "", ())
    return Track(mid, "audio", codec, {EXT_AUDIO_LEVEL: PLAYER_AUDIO_LEVEL_ID, EXT_MID: 12})


# --------------------------------------------------------------------------------------------------
# fakes and recorders


class FakeSocket:
    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    def sendto(self, data, addr) -> int:
        self.sink.append(bytes(data))
        return len(data)


class PlainTx:
    """Stands in for the transport's SRTP sender (webcall.media.srtp.SrtpSession): same calls, no crypto."""

    def send_rtp(self, sock, addr, header: struct.Struct, b0: int, b1: int, seq: int, ts: int, ssrc: int,
                 tail: bytes) -> int:
        data = header.pack(b0, b1, seq, ts, ssrc) + bytes(tail)
        return sock.sendto(data, addr)

    def protect(self, packet: bytes) -> bytes:
        return bytes(packet)


class FakeTransport:
    """Records every RTP packet a Consumer sends, whether by the forwarding fast path
    (`transport.tx.send_rtp(transport.port.sock, transport.addr, ...)`) or by `transport.send_rtp(packet)`."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.port = SimpleNamespace(sock=FakeSocket(self.sent))
        self.addr = ("127.0.0.1", 50000)
        self.sockaddr = None  # no sendmmsg address: the Consumer sends with sendto, recorded above
        self.link = None  # a UDP path (ICE-TCP players: tests/e2e/test_ice_tcp.py)
        self.tx = PlainTx()
        self.send_errors = 0

    def send_rtp(self, packet: bytes) -> None:
        self.port.sock.sendto(self.tx.protect(packet), self.addr)

    def parsed(self) -> list[Rtp]:
        return [parse(p) for p in self.sent]


@dataclass
class Calls:
    nacks: list[list[int]] = field(default_factory=list)
    keyframe_requests: int = 0
    keyframes: list[tuple[int, int]] = field(default_factory=list)


def make_producer(track: Track) -> tuple[Producer, Calls]:
    calls = Calls()

    def send_nack(producer: Producer, seqs: list[int]) -> None:
        calls.nacks.append(list(seqs))

    def send_keyframe_request(producer: Producer) -> None:
        calls.keyframe_requests += 1

    def on_keyframe(producer: Producer, width: int, height: int) -> None:
        calls.keyframes.append((width, height))

    producer = Producer(track, send_nack=send_nack, send_keyframe_request=send_keyframe_request,
                        on_keyframe=on_keyframe)
    TrackRouter(producer)  # reads the producer from now on (producer.deliver)
    return producer, calls


def router_of(producer: Producer) -> TrackRouter:
    """The router reading this producer: its `deliver` is the router's bound method."""
    router = producer.deliver.__self__  # type: ignore[union-attr]
    assert isinstance(router, TrackRouter)
    return router


def attach(producer: Producer, track: Track, now: float) -> tuple[Consumer, FakeTransport]:
    transport = FakeTransport()
    consumer = Consumer(producer, track, transport)
    router_of(producer).attach(consumer, now)
    return consumer, transport


# --------------------------------------------------------------------------------------------------
# RTP, built and parsed independently


@dataclass
class Rtp:
    padding: bool
    marker: bool
    pt: int
    seq: int
    ts: int
    ssrc: int
    csrcs: tuple[int, ...]
    profile: int | None
    elements: dict[int, bytes]
    payload: bytes


def parse(packet: bytes) -> Rtp:
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    assert b0 >> 6 == 2
    cc = b0 & 0x0F
    csrcs = struct.unpack_from(f"!{cc}I", packet, 12)
    pos = 12 + 4 * cc
    profile, elements = None, {}
    if b0 & 0x10:
        profile, words = struct.unpack_from("!HH", packet, pos)
        body = packet[pos + 4 : pos + 4 + 4 * words]
        pos += 4 + 4 * words
        i = 0
        if profile == 0xBEDE:
            while i < len(body):
                if body[i] == 0:
                    i += 1
                    continue
                ext_id, size = body[i] >> 4, (body[i] & 0x0F) + 1
                assert ext_id != 15
                elements[ext_id] = body[i + 1 : i + 1 + size]
                assert len(elements[ext_id]) == size
                i += 1 + size
        else:
            assert profile & 0xFFF0 == 0x1000
            while i < len(body):
                if body[i] == 0:
                    i += 1
                    continue
                ext_id, size = body[i], body[i + 1]
                elements[ext_id] = body[i + 2 : i + 2 + size]
                i += 2 + size
    end = len(packet) - (packet[-1] if b0 & 0x20 else 0)
    return Rtp(bool(b0 & 0x20), bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, csrcs, profile, elements, packet[pos:end])


def one_byte_block(elements: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes(((i << 4) | (len(v) - 1),)) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def make_rtp(payload: bytes, seq: int, ts: int, *, pt: int = VP8_PT, ssrc: int = PUB_SSRC, marker: bool = False,
             elements: list[tuple[int, bytes]] | None = None, padding: int = 0, csrcs: tuple[int, ...] = ()) -> bytes:
    b0 = 0x80 | len(csrcs) | (0x10 if elements else 0) | (0x20 if padding else 0)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if elements:
        out += one_byte_block(elements)
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes((padding,))
    return out


def video_elements(seq: int) -> list[tuple[int, bytes]]:
    return [(PUB_ABS_SEND_TIME, struct.pack("!I", seq * 977)[1:]), (PUB_TOFFSET, b"\x00\x00\x05"), (PUB_MID, b"1")]


def rtx_of(original: bytes, rtx_seq: int, padding: int = 0) -> bytes:
    """RFC 4588: same header but RTX pt/ssrc/seq, payload = OSN + original payload."""
    o = parse(original)
    elements = list(o.elements.items()) if o.elements else None
    return make_rtp(struct.pack("!H", o.seq) + o.payload, rtx_seq, o.ts, pt=VP8_RTX_PT, ssrc=PUB_RTX_SSRC,
                    marker=o.marker, elements=elements, padding=padding, csrcs=o.csrcs)


# --------------------------------------------------------------------------------------------------
# real VP8 frames


@dataclass
class Frame:
    payloads: list[bytes]
    key: bool


def _picture(index: int) -> av.VideoFrame:
    y, x = np.mgrid[0:240, 0:320]
    base = ((x + 2 * y + 9 * index) % 256).astype(np.uint8)
    noise = np.random.default_rng(index).integers(0, 32, (240, 320), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(np.stack([base, base // 2 + noise, 255 - base], -1).astype(np.uint8),
                                       format="rgb24")
    frame.pts, frame.time_base = index * 3000, fractions.Fraction(1, 90000)
    return frame


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """K D D K D D D: two GOPs (the second keyframe forced), every keyframe several packets long."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
    out = []
    for index, key in enumerate((True, False, False, True, False, False, False)):
        payloads, _ = encoder.encode(_picture(index), force_keyframe=key)
        out.append(Frame(list(payloads), key))
    assert all(len(f.payloads) >= 2 for f in out if f.key), "keyframes should span several packets"
    # the keyframe flag is what the encoder produced (VP8 frame tag P bit of the first partition)
    for f in out:
        descriptor_len = vp8_descriptor_length(f.payloads[0])
        assert (f.payloads[0][descriptor_len] & 0x01 == 0) == f.key
    return out


@dataclass
class Pkt:
    data: bytes
    frame: int
    first_of_frame: bool
    key_start: bool

    @property
    def seq(self) -> int:
        return (self.data[2] << 8) | self.data[3]


def packetize(frames: list[Frame], seq0: int, ts0: int = 1_000_000, ext: bool = True) -> list[Pkt]:
    out, seq = [], seq0
    for index, frame in enumerate(frames):
        ts = ts0 + 3000 * index
        for i, payload in enumerate(frame.payloads):
            data = make_rtp(payload, seq, ts, marker=i == len(frame.payloads) - 1,
                            elements=video_elements(seq) if ext else None)
            out.append(Pkt(data, index, i == 0, frame.key and i == 0))
            seq = (seq + 1) & 0xFFFF
    return out


def feed(producer: Producer, packets: list[Pkt], now: float, step: float = 0.001) -> float:
    for pkt in packets:
        producer.receive(pkt.data, now)
        now += step
    return now


def assert_continuous(out: list[Rtp]) -> None:
    for a, b in zip(out, out[1:]):
        assert b.seq == (a.seq + 1) & 0xFFFF, (a.seq, b.seq)


def assert_same_media(out: list[Rtp], packets: list[Pkt], consumer: Consumer) -> None:
    """Output i carries input i: payload and marker unchanged, labels of the player, one ts offset."""
    assert len(out) == len(packets)
    offset = None
    for o, pkt in zip(out, packets):
        i = parse(pkt.data)
        assert o.payload == i.payload
        assert o.marker == i.marker
        assert (o.pt, o.ssrc) == (PLAYER_VP8_PT, consumer.ssrc)
        delta = (o.ts - i.ts) & 0xFFFFFFFF
        offset = delta if offset is None else offset
        assert delta == offset, "timestamps must be shifted by one constant offset"


# --------------------------------------------------------------------------------------------------
# keyframe gating, sequence numbers, timestamps, labels


def test_consumer_waits_for_keyframe_then_forwards_continuously(frames) -> None:
    producer, calls = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), now=10.0)
    assert calls.keyframe_requests == 1  # nothing to replay: ask the publisher
    packets = packetize(frames, seq0=5000)
    # the stream joins mid-GOP: frames 1, 2 are inter frames of a GOP we never saw
    joined = [p for p in packets if p.frame >= 1]
    second_key = next(i for i, p in enumerate(joined) if p.key_start)
    feed(producer, joined[:second_key], 10.0)
    assert transport.sent == []
    feed(producer, joined[second_key:], 10.1)
    out = transport.parsed()
    assert out, "nothing forwarded after the keyframe"
    assert out[0].payload == parse(joined[second_key].data).payload  # starts at the keyframe
    assert_continuous(out)
    assert_same_media(out, joined[second_key:], consumer)
    assert consumer.packets == len(out)
    assert calls.keyframes == [(320, 240)]
    assert (producer.width, producer.height) == (320, 240)


def test_two_consumers_have_independent_random_starts(frames) -> None:
    producer, _ = make_producer(vp8_track())
    (c1, t1), (c2, t2) = attach(producer, player_video_track(), 1.0), attach(producer, player_video_track(), 1.0)
    feed(producer, packetize(frames, seq0=1), 2.0)
    o1, o2 = t1.parsed(), t2.parsed()
    assert [o.payload for o in o1] == [o.payload for o in o2]
    assert c1.ssrc != c2.ssrc
    assert {o.ssrc for o in o1} == {c1.ssrc} and {o.ssrc for o in o2} == {c2.ssrc}
    # independent random timestamp bases (31 random bits each), unrelated to the input's
    assert len({o1[0].ts, o2[0].ts, parse(packetize(frames, seq0=1)[0].data).ts}) == 3
    assert_continuous(o1)
    assert_continuous(o2)


def test_header_extensions_remapped_and_mid_rewritten(frames) -> None:
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(mid="video-7"), 1.0)
    packets = packetize(frames[:1], seq0=300)
    feed(producer, packets, 2.0)
    out = transport.parsed()
    assert len(out) == len(packets)
    for o, pkt in zip(out, packets):
        i = parse(pkt.data)
        assert o.elements == {
            PLAYER_ABS_ID: i.elements[PUB_ABS_SEND_TIME],
            PLAYER_TOFFSET_ID: i.elements[PUB_TOFFSET],
            PLAYER_MID_ID: b"video-7",  # the player's mid, not the publisher's "1"
        }
        assert o.profile == 0xBEDE


def test_player_without_extensions_gets_none(frames) -> None:
    producer, _ = make_producer(vp8_track())
    _, transport = attach(producer, player_video_track(extensions={}), 1.0)
    packets = packetize(frames[:1], seq0=300)
    feed(producer, packets, 2.0)
    raw = transport.sent
    assert raw and all(p[0] & 0x10 == 0 for p in raw)  # X bit cleared
    assert [parse(p).payload for p in raw] == [parse(p.data).payload for p in packets]
    assert all(len(p) == 12 + len(parse(q.data).payload) for p, q in zip(raw, packets))


def test_two_byte_extension_ids_for_the_player(frames) -> None:
    producer, _ = make_producer(vp8_track())
    track = player_video_track(extensions={EXT_MID: 20, EXT_TOFFSET: 3})
    _, transport = attach(producer, track, 1.0)
    packets = packetize(frames[:1], seq0=1)
    feed(producer, packets, 2.0)
    out = transport.parsed()
    assert all(o.profile & 0xFFF0 == 0x1000 for o in out)
    assert out[0].elements == {20: b"v1", 3: parse(packets[0].data).elements[PUB_TOFFSET]}


def test_players_with_different_layouts_each_get_their_own(frames) -> None:
    producer, _ = make_producer(vp8_track())
    _, ta = attach(producer, player_video_track(mid="a"), 1.0)
    _, tb = attach(producer, player_video_track(mid="b", extensions={EXT_MID: 9}), 1.0)
    _, tc = attach(producer, player_video_track(mid="c"), 1.0)
    feed(producer, packetize(frames[:1], seq0=1), 2.0)
    assert {o.elements[PLAYER_MID_ID] for o in ta.parsed()} == {b"a"}
    assert all(o.elements == {9: b"b"} for o in tb.parsed())
    assert {o.elements[PLAYER_MID_ID] for o in tc.parsed()} == {b"c"}


def test_audio_forwarded_from_first_packet_with_audio_level_remapped() -> None:
    producer, calls = make_producer(opus_track())
    consumer, transport = attach(producer, player_audio_track(mid="sound"), 1.0)
    assert calls.keyframe_requests == 0  # audio has no keyframes
    inputs = []
    for n in range(20):
        inputs.append(make_rtp(bytes([n]) * (40 + n), 700 + n, 48000 + 960 * n, pt=OPUS_PT, ssrc=PUB_SSRC + 1,
                               elements=[(PUB_AUDIO_LEVEL, bytes([0x80 | n])), (PUB_MID, b"0")]))
        producer.receive(inputs[-1], 1.0 + 0.02 * n)
    out = transport.parsed()
    assert len(out) == 20
    assert_continuous(out)
    for o, raw in zip(out, inputs):
        i = parse(raw)
        assert o.payload == i.payload and (o.pt, o.ssrc) == (109, consumer.ssrc)
        assert o.elements == {PLAYER_AUDIO_LEVEL_ID: i.elements[PUB_AUDIO_LEVEL], 12: b"sound"}
        assert (o.ts - i.ts) & 0xFFFFFFFF == (out[0].ts - parse(inputs[0]).ts) & 0xFFFFFFFF


def test_csrcs_and_padding_survive_forwarding() -> None:
    producer, _ = make_producer(opus_track())
    _, transport = attach(producer, player_audio_track(), 1.0)
    raw = make_rtp(b"opus-frame", 10, 960, pt=OPUS_PT, ssrc=PUB_SSRC + 1, csrcs=(0xAAAA, 0xBBBB),
                   elements=[(PUB_AUDIO_LEVEL, b"\x85")], padding=6)
    producer.receive(raw, 1.0)
    (out,) = transport.parsed()
    assert out.csrcs == (0xAAAA, 0xBBBB)
    assert out.padding and out.payload == b"opus-frame"
    assert out.elements[PLAYER_AUDIO_LEVEL_ID] == b"\x85"


@pytest.mark.parametrize("seq0", [65530, 65535, 65520])
def test_input_sequence_wraparound_keeps_continuity(frames, seq0: int) -> None:
    producer, calls = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames, seq0=seq0)
    assert any(p.seq < seq0 for p in packets), "the stream must cross 65535 → 0"
    feed(producer, packets, 2.0)
    out = transport.parsed()
    assert_continuous(out)
    assert_same_media(out, packets, consumer)
    assert calls.nacks == []  # a wrap is not a gap
    assert producer.cycles == 0x10000


def test_output_sequence_wraparound_keeps_continuity(frames) -> None:
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    consumer._next_seq = 65530  # this player's random start happens to be near the top
    packets = packetize(frames, seq0=1234)
    feed(producer, packets, 2.0)
    out = transport.parsed()
    assert out[0].seq == 65530
    assert any(o.seq < 100 for o in out)
    assert_continuous(out)


def test_timestamp_wraparound_keeps_offset(frames) -> None:
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames, seq0=1, ts0=0xFFFFFFFF - 7000)
    feed(producer, packets, 2.0)
    assert_same_media(transport.parsed(), packets, consumer)


def test_late_packet_from_before_the_start_is_dropped(frames) -> None:
    producer, _ = make_producer(vp8_track(nack=False))
    _, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames, seq0=100)
    first_key = 0
    late = packets[first_key + 1]
    feed(producer, [p for p in packets if p is not late], 2.0)
    count = len(transport.sent)
    producer.receive(late.data, 3.0)  # reordered, after the consumer started: forwarded
    assert len(transport.sent) == count + 1
    # a player that started later never gets a packet from before its start
    producer2, _ = make_producer(vp8_track(nack=False))
    k2 = next(i for i, p in enumerate(packets) if p.key_start and i > 0)
    feed(producer2, packets[1 : k2 - 2], 2.0)  # joined mid-GOP: no keyframe to replay
    _, t2 = attach(producer2, player_video_track(), 2.5)
    assert t2.sent == []
    feed(producer2, packets[k2:], 3.0)
    assert parse(t2.sent[0]).payload == parse(packets[k2].data).payload
    n = len(t2.sent)
    producer2.receive(packets[k2 - 1].data, 4.0)  # older than the keyframe this player started with
    assert len(t2.sent) == n


def test_header_only_packet_does_not_break_the_producer(frames) -> None:
    """A valid 12-byte RTP packet (no payload) on the video SSRC is not a keyframe; the port ends the
    publisher's connection on any exception, so receive() must not raise."""
    producer, _ = make_producer(vp8_track())
    _, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames[:2], seq0=10)
    feed(producer, packets[:3], 2.0)
    producer.receive(make_rtp(b"", (packets[2].seq + 1) & 0xFFFF, parse(packets[2].data).ts), 2.1)
    later = packetize(frames[:2], seq0=packets[2].seq - 1)[3:]  # numbered from seq + 2 on
    feed(producer, later, 2.2)
    assert len(transport.sent) == 3 + 1 + len(later)
    assert_continuous(transport.parsed())


# --------------------------------------------------------------------------------------------------
# loss: NACK, retransmissions, RTX, duplicates


def test_gap_sends_nack_with_exactly_the_missing_seqs_and_retransmission_is_forwarded(frames) -> None:
    producer, calls = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames, seq0=1000)
    lost = [packets[5], packets[6], packets[9]]
    now = feed(producer, [p for p in packets[:12] if p not in lost], 2.0)
    assert calls.nacks == [[1005, 1006], [1009]]
    assert sorted(s & 0xFFFF for s in producer.missing) == [1005, 1006, 1009]
    count = len(transport.sent)
    producer.receive(packets[6].data, now)  # the retransmission (same bytes)
    assert 1006 not in {s & 0xFFFF for s in producer.missing}
    assert producer.recovered == 1
    assert len(transport.sent) == count + 1
    out = parse(transport.sent[-1])
    assert out.payload == parse(packets[6].data).payload
    first = parse(transport.sent[0])
    assert out.seq == (first.seq + 6) & 0xFFFF  # its place in the player's numbering
    # the same retransmission again: a duplicate, not forwarded
    producer.receive(packets[6].data, now + 0.01)
    assert len(transport.sent) == count + 1
    assert producer.duplicates == 1


def test_gap_across_wraparound_is_nacked_and_recovered(frames) -> None:
    """Loss of 65535 and 0: NACK both, and their retransmissions clear `missing` (no further NACKs)."""
    producer, calls = make_producer(vp8_track())
    _, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames, seq0=65530)
    lost = [p for p in packets if p.seq in (65535, 0)]
    assert len(lost) == 2
    now = feed(producer, [p for p in packets if p not in lost], 2.0)
    assert calls.nacks == [[65535, 0]]
    for p in lost:
        producer.receive(p.data, now)
    assert producer.missing == {}, f"recovered packets still missing: {producer.missing}"
    assert producer.recovered == 2
    producer.retry_nacks(now + 1.0)
    assert calls.nacks == [[65535, 0]]
    out = transport.parsed()
    by_payload = {o.payload: o for o in out}
    first = out[0]
    for p in lost:
        index = packets.index(p)
        assert by_payload[parse(p.data).payload].seq == (first.seq + index) & 0xFFFF


def test_retry_nacks_up_to_the_limit() -> None:
    producer, calls = make_producer(vp8_track())
    t = 5.0
    for seq in (1, 2, 5, 6):
        producer.receive(make_rtp(b"\x00" * 20, seq, 90000), t)
    assert calls.nacks == [[3, 4]]
    producer.retry_nacks(t + NACK_RETRY_INTERVAL / 2)
    assert calls.nacks == [[3, 4]]  # not due yet
    producer.receive(make_rtp(b"\x00" * 20, 4, 90000), t + 0.01)  # 4 recovered
    now = t
    requests = calls.keyframe_requests
    for _ in range(NACK_RETRIES + 3):
        now += NACK_RETRY_INTERVAL + 0.001
        producer.retry_nacks(now)
    assert calls.nacks == [[3, 4]] + [[3]] * (NACK_RETRIES - 1)
    assert producer.missing == {}
    assert calls.keyframe_requests == requests + 1  # 3 is lost for good: players need a keyframe


def test_no_nack_without_nack_feedback() -> None:
    producer, calls = make_producer(vp8_track(nack=False))
    for seq in (1, 2, 5):
        producer.receive(make_rtp(b"\x00" * 20, seq, 90000), 1.0)
    assert calls.nacks == [] and producer.missing == {}


def test_burst_loss_asks_for_a_keyframe_instead_of_nacking() -> None:
    producer, calls = make_producer(vp8_track())
    producer.receive(make_rtp(b"\x00" * 20, 10, 90000), 1.0)
    producer.receive(make_rtp(b"\x00" * 20, 10 + MAX_NACK_BATCH + 2, 90000), 1.0)
    assert calls.nacks == []
    assert calls.keyframe_requests == 1


def test_rtx_packet_is_unwrapped_into_the_original(frames) -> None:
    producer, calls = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames[:2], seq0=2000)
    victim = packets[3]
    now = feed(producer, [p for p in packets if p is not victim], 2.0)
    assert calls.nacks == [[victim.seq]]
    producer.receive_rtx(rtx_of(victim.data, rtx_seq=777, padding=17), now)
    assert producer.lookup(victim.seq) == victim.data  # byte-identical original in the ring
    assert producer.missing == {}
    out = parse(transport.sent[-1])
    assert out.payload == parse(victim.data).payload
    assert (out.pt, out.ssrc) == (PLAYER_VP8_PT, consumer.ssrc)
    assert out.seq == (parse(transport.sent[0]).seq + 3) & 0xFFFF
    assert not out.padding


def test_rtx_padding_only_probe_is_ignored(frames) -> None:
    producer, _ = make_producer(vp8_track())
    _, transport = attach(producer, player_video_track(), 1.0)
    feed(producer, packetize(frames[:1], seq0=1), 2.0)
    count, packets_before = len(transport.sent), producer.packets
    probe = make_rtp(b"", 50, 1234, pt=VP8_RTX_PT, ssrc=PUB_RTX_SSRC, padding=224)
    producer.receive_rtx(probe, 3.0)
    assert len(transport.sent) == count and producer.packets == packets_before


def test_duplicates_are_dropped(frames) -> None:
    producer, _ = make_producer(vp8_track())
    _, transport = attach(producer, player_video_track(), 1.0)
    packets = packetize(frames[:2], seq0=10)
    now = 2.0
    for p in packets:
        producer.receive(p.data, now)
        producer.receive(p.data, now)  # immediate duplicate
    for p in packets[-5:]:
        producer.receive(p.data, now)  # late duplicates of recent packets
    assert len(transport.sent) == len(packets)
    assert producer.duplicates == len(packets) + 5
    assert producer.packets == len(packets)


# --------------------------------------------------------------------------------------------------
# Consumer.on_nack


def _forwarded(frames, rtx: bool, padding_at: int | None = None):
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(rtx=rtx), 1.0)
    packets = packetize(frames[:2], seq0=40000)
    if padding_at is not None:
        p = packets[padding_at]
        o = parse(p.data)
        p.data = make_rtp(o.payload, o.seq, o.ts, marker=o.marker, elements=list(o.elements.items()), padding=11)
    feed(producer, packets, 2.0)
    return producer, consumer, transport, packets


def test_on_nack_answers_over_rtx(frames) -> None:
    producer, consumer, transport, packets = _forwarded(frames, rtx=True, padding_at=4)
    originals = transport.parsed()
    sent_before = len(transport.sent)
    wanted = [originals[2].seq, originals[4].seq, (originals[-1].seq + 50) & 0xFFFF]  # last one never sent
    consumer.on_nack(wanted)
    rtx = [parse(p) for p in transport.sent[sent_before:]]
    assert len(rtx) == 2
    assert consumer.retransmits == 2
    for r, original in zip(rtx, (originals[2], originals[4])):
        assert (r.pt, r.ssrc) == (PLAYER_RTX_PT, consumer.rtx_ssrc)
        assert consumer.rtx_ssrc != consumer.ssrc
        assert struct.unpack("!H", r.payload[:2])[0] == original.seq  # OSN = the player's seq
        assert r.payload[2:] == original.payload
        assert r.ts == original.ts and r.marker == original.marker
        assert r.elements == original.elements
        assert not r.padding
    assert rtx[1].seq == (rtx[0].seq + 1) & 0xFFFF
    assert originals[4].padding  # the original had padding; RTX dropped it and kept the payload intact


def test_on_nack_answers_plain_without_rtx(frames) -> None:
    producer, consumer, transport, packets = _forwarded(frames, rtx=False)
    sent = list(transport.sent)
    consumer.on_nack([parse(sent[1]).seq, parse(sent[7]).seq])
    assert transport.sent[len(sent):] == [sent[1], sent[7]]  # byte-identical to the first send


def test_on_nack_across_player_seq_wraparound(frames) -> None:
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(rtx=False), 1.0)
    consumer._next_seq = 65533
    feed(producer, packetize(frames[:2], seq0=100), 2.0)
    sent = list(transport.sent)
    wrapped = [p for p in sent if parse(p).seq in (65535, 0, 1)]
    consumer.on_nack([parse(p).seq for p in wrapped])
    assert transport.sent[len(sent):] == wrapped


def test_on_nack_before_anything_was_forwarded_is_ignored() -> None:
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    consumer.on_nack([1, 2, 3])
    assert transport.sent == []


# --------------------------------------------------------------------------------------------------
# late joiners: GOP replay and keyframe requests


def test_late_consumer_gets_the_gop_replayed(frames) -> None:
    producer, calls = make_producer(vp8_track())
    packets = packetize(frames, seq0=30000)
    second_key = next(i for i, p in enumerate(packets) if p.key_start and i > 0)
    now = feed(producer, packets[: second_key + 8], 1.0)  # into the second GOP
    consumer, transport = attach(producer, player_video_track(), now)
    out = transport.parsed()
    replay = packets[second_key : second_key + 8]
    assert len(out) == len(replay)
    assert out[0].payload == parse(packets[second_key].data).payload  # starts at the keyframe
    assert_continuous(out)
    assert_same_media(out, replay, consumer)
    assert out[0].elements[PLAYER_MID_ID] == b"v1"
    # live packets continue the same numbering and timing
    feed(producer, packets[second_key + 8 :], now)
    out = transport.parsed()
    assert_continuous(out)
    assert_same_media(out, packets[second_key:], consumer)


def test_keyframe_requests_are_rate_limited(frames) -> None:
    producer, calls = make_producer(vp8_track())
    attach(producer, player_video_track(), 1.0)
    attach(producer, player_video_track(), 1.0 + KEYFRAME_MIN_INTERVAL / 2)
    assert calls.keyframe_requests == 1
    attach(producer, player_video_track(), 1.0 + KEYFRAME_MIN_INTERVAL + 0.01)
    assert calls.keyframe_requests == 2


def test_two_late_joiners_share_one_keyframe_request(frames) -> None:
    producer, calls = make_producer(vp8_track())
    now = feed(producer, packetize(frames[:3], seq0=1), 1.0)
    _, t1 = attach(producer, player_video_track(), now)
    _, t2 = attach(producer, player_video_track(), now + 0.1)
    assert t1.sent and t2.sent  # both got the replay
    assert calls.keyframe_requests == 1


def test_consumer_request_keyframe_is_rate_limited_by_the_producer(frames) -> None:
    producer, calls = make_producer(vp8_track())
    c1, _ = attach(producer, player_video_track(), 1.0)
    c2, _ = attach(producer, player_video_track(), 5.0)
    assert calls.keyframe_requests == 2
    c1.request_keyframe(5.1)
    c2.request_keyframe(5.2)
    assert calls.keyframe_requests == 2
    c2.request_keyframe(5.0 + KEYFRAME_MIN_INTERVAL + 0.01)
    assert calls.keyframe_requests == 3
    assert (c1.keyframe_requests, c2.keyframe_requests) == (1, 2)


def test_no_replay_over_a_hole_in_the_gop(frames) -> None:
    producer, calls = make_producer(vp8_track(nack=False))
    packets = packetize(frames[:3], seq0=1)
    hole = packets[4]
    now = feed(producer, [p for p in packets if p is not hole], 1.0)
    _, transport = attach(producer, player_video_track(), now)
    assert transport.sent == []  # a broken picture is worse than waiting
    assert calls.keyframe_requests == 1


def test_keyframe_recovered_by_nack_is_the_latest_keyframe(frames) -> None:
    """The first packet of the second keyframe is lost and comes back as a retransmission: that
    keyframe must still count (GOP replay starts there, its size is reported)."""
    producer, calls = make_producer(vp8_track())
    packets = packetize(frames, seq0=100)
    second_key = next(i for i, p in enumerate(packets) if p.key_start and i > 0)
    lost = packets[second_key]
    now = feed(producer, [p for p in packets[: second_key + 6] if p is not lost], 1.0)
    assert calls.nacks == [[lost.seq]]
    producer.receive(lost.data, now)
    assert producer.keyframes == 2
    _, transport = attach(producer, player_video_track(), now + 0.01)
    out = transport.parsed()
    assert out, "no GOP replay"
    assert out[0].payload == parse(lost.data).payload, "replay must start at the latest keyframe"
    assert len(out) == len(packets[second_key : second_key + 6])


# --------------------------------------------------------------------------------------------------
# RTCP: receiver report block, sender report


def _rr(block: bytes) -> tuple[int, int, int, int]:
    ssrc, fraction, lost, highest, _jitter, _lsr, _dlsr = struct.unpack("!IB3sIIII", block)
    return ssrc, fraction, int.from_bytes(lost, "big"), highest


def _audio(seq: int, ts: int = 0) -> bytes:
    return make_rtp(b"\x01" * 50, seq, ts, pt=OPUS_PT, ssrc=PUB_SSRC + 1)


def test_report_block_loss_fraction_and_cumulative() -> None:
    producer, _ = make_producer(opus_track())
    assert producer.report_block(1.0) is None  # nothing received yet
    now = 1.0
    for seq in range(1000, 1100):
        if not 1010 <= seq < 1020:
            producer.receive(_audio(seq, seq * 960), now)
        now += 0.02
    ssrc, fraction, lost, highest = _rr(producer.report_block(now))
    assert ssrc == PUB_SSRC + 1
    assert (fraction, lost, highest) == ((10 * 256) // 100, 10, 1099)
    # next interval: 50 expected, 5 new losses, 2 old ones arrive late
    for seq in range(1100, 1150):
        if seq % 10 != 3:
            producer.receive(_audio(seq, seq * 960), now)
        now += 0.02
    producer.receive(_audio(1012, 1012 * 960), now)
    producer.receive(_audio(1013, 1013 * 960), now)
    _, fraction, lost, highest = _rr(producer.report_block(now))
    assert (fraction, lost, highest) == ((3 * 256) // 50, 13, 1149)
    # no loss in an interval: fraction 0, cumulative unchanged
    for seq in range(1150, 1160):
        producer.receive(_audio(seq, seq * 960), now)
    _, fraction, lost, highest = _rr(producer.report_block(now))
    assert (fraction, lost, highest) == (0, 13, 1159)


def test_report_block_extended_highest_counts_cycles() -> None:
    producer, _ = make_producer(opus_track())
    for n in range(40):
        producer.receive(_audio((65520 + n) & 0xFFFF), 1.0 + n * 0.02)
    _, fraction, lost, highest = _rr(producer.report_block(2.0))
    assert (fraction, lost, highest) == (0, 0, 0x10000 + (65520 + 39 - 65536))


def test_report_block_with_sender_report_lsr_dlsr() -> None:
    producer, _ = make_producer(opus_track())
    producer.receive(_audio(1), 1.0)
    ntp = (0x12345678 << 32) | 0x9ABCDEF0
    producer.on_sender_report(ntp, 5555, 2.0)
    *_, lsr, dlsr = struct.unpack("!IB3sIIII", producer.report_block(2.5))
    assert lsr == 0x56789ABC
    assert dlsr == 32768  # 0.5 s in 1/65536 s


def test_sender_report_maps_ntp_to_the_players_rtp_clock(frames) -> None:
    producer, _ = make_producer(vp8_track())
    consumer, transport = attach(producer, player_video_track(), 1.0)
    assert consumer.sender_report(1.0, 1 << 32) is None  # nothing forwarded yet
    packets = packetize(frames[:4], seq0=1)
    now = feed(producer, packets, 10.0, step=0.0)  # all at t = 10.0
    last = parse(transport.sent[-1])
    ssrc, ntp, rtp_ts, count, _octets = struct.unpack("!IQIII", consumer.sender_report(10.0, 0xAABBCCDD00000000))
    assert (ssrc, ntp, count) == (consumer.ssrc, 0xAABBCCDD00000000, len(packets))
    assert rtp_ts == last.ts  # at the arrival time of the newest packet, the clock shows its timestamp
    _, _, later, _, _ = struct.unpack("!IQIII", consumer.sender_report(11.5, 0))
    assert (later - last.ts) & 0xFFFFFFFF == 135000  # 1.5 s of a 90 kHz clock
    # once the publisher sends an SR, its mapping is used, through the publisher's clock offset
    in_ts = parse(packets[-1].data).ts
    producer.on_sender_report(0x1111 << 32, (in_ts + 45000) & 0xFFFFFFFF, 12.0, local_ntp=0x2222 << 32)
    quarter = 1 << 30  # 0.25 s in NTP units
    _, _, mapped, _, _ = struct.unpack("!IQIII", consumer.sender_report(12.25, (0x2222 << 32) + quarter))
    assert (mapped - last.ts) & 0xFFFFFFFF == 45000 + 22500


def test_sender_reports_map_audio_and_video_through_one_publisher_clock() -> None:
    """Lip sync: an SR whose NTP/RTP pair was already stale when it left (aiortc stamps the last packet sent)
    must not shift that track against the other. Both tracks use the publisher's own mappings and one offset."""
    video, _ = make_producer(vp8_track())
    audio, _ = make_producer(opus_track())
    audio.sender_clock = video.sender_clock  # as PublisherEndpoint does
    second = 1 << 32
    base = 0x5000 << 32  # the publisher's NTP time of the video SR
    delay = second // 100  # 10 ms on the way
    video.receive(make_rtp(b"\x10" + b"v" * 20, 1, 90_000, pt=VP8_PT, ssrc=PUB_SSRC, marker=True), 1.0)
    audio.receive(_audio(1, 48_000), 1.0)
    video.on_sender_report(base, 90_000, 1.0, local_ntp=(0x9000 << 32) + delay)
    # The audio SR leaves at the same moment, but describes an instant 30 ms earlier.
    stale = 3 * second // 100
    audio.on_sender_report(base - stale, 48_000 - 1440, 1.0, local_ntp=(0x9000 << 32) + delay)
    assert video.sender_clock.offset == pytest.approx(0x4000 + 0.01, abs=1e-6)
    t = (0x9000 << 32) + second  # our clock, 1 s after the SRs arrived
    publisher_time = (t - (0x4000 << 32) - delay - base) / second  # in the publisher's clock, since `base`
    assert video.rtp_time_at(0.0, t) == int(90_000 + publisher_time * 90_000)
    # the audio mapping as the publisher declared it (48_000 at `base`), at the same publisher instant
    assert abs(audio.rtp_time_at(0.0, t) - int(48_000 + publisher_time * 48_000)) <= 1


def test_a_track_without_its_own_sender_report_waits_while_a_sibling_has_one() -> None:
    """Its mapping would come from packet arrival and disagree with the sibling's SR-based one by the jitter
    (seen in CI: the first audio/video SR pair of a relayed copy 11–21 ms apart). No SR, until its own arrives
    or SR_WAIT has passed (a publisher may never send SRs for a track: then arrival it is)."""
    video, _ = make_producer(vp8_track())
    audio, _ = make_producer(opus_track())
    audio.sender_clock = video.sender_clock  # as PublisherEndpoint does
    video.receive(make_rtp(b"\x10" + b"v" * 20, 1, 90_000, pt=VP8_PT, ssrc=PUB_SSRC, marker=True), 1.0)
    audio.receive(_audio(1, 48_000), 1.0)
    assert audio.rtp_time_at(1.5) is not None  # no SR from anyone: arrival for both
    video.on_sender_report(0x5000 << 32, 90_000, 2.0, local_ntp=0x9000 << 32)
    assert video.rtp_time_at(2.5, 0x9000 << 32) is not None
    assert audio.rtp_time_at(2.5, 0x9000 << 32) is None
    assert audio.rtp_time_at(2.0 + SR_WAIT + 0.1, 0x9000 << 32) is not None
    audio.on_sender_report(0x5000 << 32, 48_000, 3.0, local_ntp=0x9000 << 32)
    assert audio.rtp_time_at(3.5, 0x9000 << 32) is not None


def test_sender_report_audio_clock() -> None:
    producer, _ = make_producer(opus_track())
    consumer, transport = attach(producer, player_audio_track(), 1.0)
    for n in range(5):
        producer.receive(_audio(n, 960 * n), 20.0)
    last = parse(transport.sent[-1])
    _, _, rtp_ts, _, _ = struct.unpack("!IQIII", consumer.sender_report(22.0, 0))
    assert (rtp_ts - last.ts) & 0xFFFFFFFF == 96000


def test_sender_report_octet_count_is_payload_only() -> None:
    """RFC 3550 §6.4.1: the sender's octet count excludes header, CSRCs, extensions and padding."""
    producer, _ = make_producer(opus_track())
    consumer, transport = attach(producer, player_audio_track(), 1.0)
    for n in range(10):
        producer.receive(make_rtp(b"\x02" * (30 + n), n, 960 * n, pt=OPUS_PT, ssrc=PUB_SSRC + 1,
                                  elements=[(PUB_AUDIO_LEVEL, b"\x90"), (PUB_MID, b"0")], padding=3), 5.0)
    *_, packets, octets = struct.unpack("!IQIII", consumer.sender_report(5.0, 0))
    assert packets == 10
    assert octets == sum(30 + n for n in range(10))


def test_ntp_now_is_aiortcs_ntp_clock() -> None:
    """Sender reports take our NTP time from ntp_now(); it is the clock aiortc's current_ntp_time reads (the one
    a publisher's SR arrival was stamped with before), to within the time between the two reads."""
    from aiortc.clock import current_ntp_time

    from webcall.media.producer import NTP_UNIT, ntp_now

    before = current_ntp_time()
    ours = ntp_now()
    after = current_ntp_time()
    assert before - NTP_UNIT * 1e-6 <= ours <= after + NTP_UNIT * 1e-6  # aiortc truncates to microseconds
