"""The inter-worker relay (webcall/workers/relay.py): the codec, and real UDP sockets on 127.0.0.1 — across two
processes for order, identity and feedback; in one process for the garbage and the strangers it must drop."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from webcall.workers.relay import (
    HEADER,
    KEYFRAME,
    MAGIC,
    MAX_NACK,
    MEDIA,
    NACK,
    RelayEndpoint,
    RelayFormatError,
    decode,
    encode_keyframe_request,
    encode_media,
    encode_nack,
)

ROOT = Path(__file__).resolve().parents[2]

PACKETS = textwrap.dedent("""
    import random, struct

    def make_packet(i):
        rnd = random.Random(i)
        payload = rnd.randbytes(rnd.randrange(1, 1189))
        return struct.pack("!BBHII", 0x80, 96 | (0x80 if i % 10 == 9 else 0), i & 0xFFFF, i * 3000, 0x1234ABCD) + payload
""")
_ns: dict = {}
exec(PACKETS, _ns)
make_packet = _ns["make_packet"]

SENDER = PACKETS + textwrap.dedent("""
    import asyncio, json, sys
    from webcall.workers.relay import RelayEndpoint

    def out(*msg):
        print(json.dumps(msg), flush=True)

    async def main():
        dest = (sys.argv[1], int(sys.argv[2]))
        stream_id, count = int(sys.argv[3]), int(sys.argv[4])
        loop = asyncio.get_running_loop()
        ep = await RelayEndpoint.bind(on_keyframe_request=lambda s, t: out("keyframe", s, t),
                                      on_nack=lambda s, t, seqs: out("nack", s, t, seqs))
        out("ready", ep.address[1])
        await loop.run_in_executor(None, sys.stdin.readline)
        sender = ep.sender(dest, stream_id)
        for i in range(count):
            packet = make_packet(i)
            while not sender.send(i % 2, packet):
                await asyncio.sleep(0.001)
            if i % 50 == 49:
                await asyncio.sleep(0.002)  # paced like media: the receiver's socket buffer never overflows
        out("sent", ep.stats.sent)
        await loop.run_in_executor(None, sys.stdin.readline)
        out("stats", ep.stats.feedback_received, ep.stats.unknown_stream)

    asyncio.run(main())
""")


# -- codec -----------------------------------------------------------------------------------------------------


def test_codec_roundtrip():
    pkt = make_packet(7)
    msg = decode(encode_media(0xFFFFFFFF, 3, pkt))
    assert (msg.kind, msg.stream_id, msg.track, msg.packet) == (MEDIA, 0xFFFFFFFF, 3, pkt)
    assert len(encode_media(1, 0, pkt)) == HEADER.size + len(pkt) == 8 + len(pkt)
    msg = decode(encode_keyframe_request(5, 1))
    assert (msg.kind, msg.stream_id, msg.track) == (KEYFRAME, 5, 1)
    (dgram,) = encode_nack(5, 0, [10, 11, 10, 65535, 65536])
    msg = decode(dgram)
    assert (msg.kind, msg.seqs) == (NACK, (10, 11, 65535, 0))
    chunks = encode_nack(9, 2, range(MAX_NACK * 2 + 1))
    assert [len(decode(c).seqs) for c in chunks] == [MAX_NACK, MAX_NACK, 1]
    with pytest.raises(ValueError):
        encode_media(-1, 0, pkt)
    with pytest.raises(ValueError):
        encode_keyframe_request(1, 256)


@pytest.mark.parametrize("bad", [
    b"",
    b"\x57\x01\x00",
    bytes([0x00, MEDIA, 0, 0, 0, 0, 0, 1]) + make_packet(1),  # bad magic
    bytes([MAGIC, MEDIA, 0, 1, 0, 0, 0, 1]) + make_packet(1),  # reserved byte set
    bytes([MAGIC, 9, 0, 0, 0, 0, 0, 1]),  # unknown kind
    encode_media(1, 0, b"\x80" * 11),  # shorter than an RTP header
    encode_media(1, 0, b"\x40" + bytes(20)),  # RTP version 1
    encode_keyframe_request(1, 0) + b"x",
    encode_nack(1, 0, [1, 2])[0][:-1],  # truncated
    HEADER.pack(MAGIC, NACK, 0, 0, 1) + struct.pack("!H", 0),  # empty NACK
    HEADER.pack(MAGIC, NACK, 0, 0, 1),
])
def test_decode_rejects(bad):
    with pytest.raises(RelayFormatError):
        decode(bad)


# -- across two processes ----------------------------------------------------------------------------------------


async def test_packets_cross_processes_in_order_and_identical_and_feedback_flows_back():
    got: list[tuple[int, int, bytes]] = []
    count = 1000
    done = asyncio.Event()

    def on_packet(stream_id: int, track: int, packet: bytes) -> None:
        got.append((stream_id, track, packet))
        if len(got) == count:
            done.set()

    rx = await RelayEndpoint.bind(on_packet=on_packet)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, *map(str, rx.address), "42", str(count), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)

    async def line() -> list:
        return json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))

    try:
        kind, port = await line()
        assert kind == "ready"
        rx.subscribe(42, ("127.0.0.1", port))
        proc.stdin.write(b"go\n")
        await asyncio.wait_for(done.wait(), 30)
        assert await line() == ["sent", count]
        assert [(s, t) for s, t, _ in got] == [(42, i % 2) for i in range(count)]
        assert [p for _, _, p in got] == [make_packet(i) for i in range(count)]  # in order, byte-identical
        assert rx.stats.received == count and rx.stats.malformed == rx.stats.unknown_stream == 0

        assert rx.request_keyframe(42, 0)
        assert await line() == ["keyframe", 42, 0]
        assert rx.nack(42, 1, [7, 9, 11])
        assert await line() == ["nack", 42, 1, [7, 9, 11]]
        assert not rx.nack(43, 0, [1])  # not subscribed: nothing to ask
        proc.stdin.write(b"done\n")
        assert await line() == ["stats", 2, 0]
        assert rx.stats.feedback_sent == 2
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        rx.close()


# -- hostile and stray datagrams ------------------------------------------------------------------------------------


async def settle(endpoint: RelayEndpoint, field: str, value: int) -> None:
    for _ in range(200):
        if getattr(endpoint.stats, field) >= value:
            return
        await asyncio.sleep(0.005)


async def test_garbage_is_counted_and_dropped():
    got = []
    rx = await RelayEndpoint.bind(on_packet=lambda *a: got.append(a))
    tx = await RelayEndpoint.bind()
    rx.subscribe(1, tx.address)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    garbage = [b"", b"x", b"\x57\x01", os.urandom(1200), encode_media(1, 0, b"\x00" * 40),
               HEADER.pack(MAGIC, NACK, 0, 0, 1) + b"\xff\xff"]
    for g in garbage:
        raw.sendto(g, rx.address)
    await settle(rx, "malformed", len(garbage))
    assert rx.stats.malformed == len(garbage) and rx.stats.received == 0 and got == []
    # still works afterwards
    assert tx.sender(rx.address, 1).send(0, make_packet(1))
    await settle(rx, "received", 1)
    assert got == [(1, 0, make_packet(1))]
    raw.close(), rx.close(), tx.close()


async def test_unknown_streams_strangers_and_unsolicited_feedback_are_dropped():
    got, feedback = [], []
    rx = await RelayEndpoint.bind(on_packet=lambda *a: got.append(a))
    tx = await RelayEndpoint.bind(on_keyframe_request=lambda *a: feedback.append(a), on_nack=lambda *a: feedback.append(a))
    other = await RelayEndpoint.bind()
    rx.subscribe(5, tx.address)

    tx.sender(rx.address, 6).send(0, make_packet(1))  # a stream rx never asked for
    await settle(rx, "unknown_stream", 1)
    assert rx.stats.unknown_stream == 1
    other.sender(rx.address, 5).send(0, make_packet(2))  # the right id from the wrong worker
    await settle(rx, "wrong_source", 1)
    assert rx.stats.wrong_source == 1 and got == []

    # feedback for a stream tx does not send to that address
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.sendto(encode_keyframe_request(5, 0), tx.address)
    await settle(tx, "unknown_stream", 1)
    assert tx.stats.unknown_stream == 1 and feedback == []
    # once tx sends stream 5 to rx, rx's feedback is accepted — and only rx's
    sender = tx.sender(rx.address, 5)
    assert sender.send(0, make_packet(3))
    await settle(rx, "received", 1)
    assert got == [(5, 0, make_packet(3))]
    rx.request_keyframe(5, 0)
    rx.nack(5, 0, [3])
    raw.sendto(encode_keyframe_request(5, 0), tx.address)
    await settle(tx, "feedback_received", 2)
    await settle(tx, "unknown_stream", 2)
    assert feedback == [(5, 0), (5, 0, [3])] and tx.stats.unknown_stream == 2
    sender.close()
    rx.request_keyframe(5, 0)
    await settle(tx, "unknown_stream", 3)
    assert tx.stats.unknown_stream == 3 and len(feedback) == 2
    rx.unsubscribe(5)
    tx.sender(rx.address, 5).send(0, make_packet(4))
    await settle(rx, "unknown_stream", 2)
    assert rx.stats.unknown_stream == 2 and len(got) == 1
    raw.close(), rx.close(), tx.close(), other.close()


async def test_callback_errors_are_counted_not_raised():
    def boom(*_):
        raise RuntimeError("consumer bug")

    rx = await RelayEndpoint.bind(on_packet=boom)
    tx = await RelayEndpoint.bind()
    rx.subscribe(1, tx.address)
    tx.sender(rx.address, 1).send(0, make_packet(1))
    tx.sender(rx.address, 1).send(0, make_packet(2))
    await settle(rx, "callback_errors", 2)
    assert rx.stats.callback_errors == 2 and rx.stats.received == 2
    rx.close(), tx.close()


async def test_relay_bench_runs_and_prints_its_cost():
    """The cost script (`python -m webcall.workers.relay_bench`) on a short run: it works; timing is printed, not
    asserted."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall.workers.relay_bench", "--packets", "2000", cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    result = json.loads(out)
    print(result)
    assert result["received"] + result["send_dropped"] <= 2000 and result["received"] > 0
    assert result["tx_us_per_packet"] > 0 and result["rx_us_per_packet"] > 0
