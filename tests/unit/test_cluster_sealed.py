"""The relay between nodes (cluster/sealed.py) on real UDP sockets on 127.0.0.1: media and feedback arrive
sealed; a node accepts only the relays it asked for — plain datagrams, another key, a replay, an unknown relay
id or another sender are dropped and counted, never delivered."""

from __future__ import annotations

import asyncio
import socket
import struct

from webcall.cluster.sealed import DOWN, END, UP, SealedRelay, new_key
from webcall.workers.relay import encode_media


def rtp(seq: int, payload: bytes = b"x" * 100) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, 1234) + payload


async def pair():
    got: list[tuple[int, int, bytes]] = []
    feedback: list[tuple[str, int, object]] = []
    ready: list[int] = []
    ends: list[str] = []
    origin = await SealedRelay.bind("127.0.0.1", 0, on_keyframe_request=lambda s, t: feedback.append(("kf", s, t)),
                                    on_nack=lambda s, t, q: feedback.append(("nack", s, q)),
                                    on_ready=lambda link: ready.append(link.stream_id))
    edge = await SealedRelay.bind("127.0.0.1", 0, on_packet=lambda s, t, p: got.append((s, t, p)),
                                  on_end=lambda link, reason: ends.append(reason))
    return origin, edge, got, feedback, ready, ends


async def settle() -> None:
    await asyncio.sleep(0.05)


async def test_sealed_media_and_feedback_flow_only_after_the_edge_asked() -> None:
    origin, edge, got, feedback, ready, ends = await pair()
    try:
        down, up = new_key(), new_key()
        # the edge pulls relay 7 from the origin; the origin accepts it for the edge's address
        link_in = edge.pull(7, origin.address, down, up)
        link_out = origin.offer(edge.address, 7, down, up)
        edge.keepalive(link_in, UP)
        await settle()
        assert ready == [7]  # the edge's first datagram: the origin may send
        sender = origin.sealed_sender(link_out)
        for seq in range(5):
            assert sender.send(1, rtp(seq))
        await settle()
        assert [(s, t, p) for s, t, p in got] == [(7, 1, rtp(seq)) for seq in range(5)]
        assert edge.request_keyframe(7, 1) and edge.nack(7, 1, [3, 4])
        await settle()
        assert feedback == [("kf", 7, 1), ("nack", 7, [3, 4])]
        # on the wire nothing is in clear: the payload bytes are not in the datagram
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", 0))
        spy = origin.offer(raw.getsockname(), 9, new_key(), new_key())
        origin.sealed_sender(spy).send(0, rtp(1, b"SECRET-PAYLOAD" * 4))
        data = raw.recv(2048)
        assert b"SECRET-PAYLOAD" not in data and data[0] == 0x5A
        raw.close()
        # the origin ends the stream: the edge hears why
        origin.withdraw(link_out, "publisher-stopped")
        await settle()
        assert ends and ends[0] == "publisher-stopped"
    finally:
        origin.close()
        edge.close()


async def test_what_was_not_asked_for_is_dropped_and_counted() -> None:
    origin, edge, got, feedback, ready, _ = await pair()
    stranger = await SealedRelay.bind("127.0.0.1", 0)
    try:
        down, up = new_key(), new_key()
        link_in = edge.pull(7, origin.address, down, up)
        link_out = origin.offer(edge.address, 7, down, up)
        edge.keepalive(link_in, UP)
        await settle()
        good = origin.sealed_sender(link_out)

        # 1. a plain relay datagram (what workers send each other): refused
        origin.sock.sendto(encode_media(7, 0, rtp(1)), edge.address)
        # 2. the right id from the right address, sealed with another key
        forged = origin.offer(edge.address, 7, new_key(), up)  # replaces the origin's link: wrong DOWN key
        origin.sealed_sender(forged).send(0, rtp(2))
        origin.out_links[(7, edge.address)] = link_out
        # 3. a stream id the edge never pulled
        other = origin.offer(edge.address, 8, down, up)
        origin.sealed_sender(other).send(0, rtp(3))
        # 4. the right keys, from another socket (address)
        thief = stranger.offer(edge.address, 7, down, up)
        stranger.sealed_sender(thief).send(0, rtp(4))
        # 5. feedback from an edge the origin never offered to
        stray = stranger.pull(7, origin.address, new_key(), new_key())
        stranger.request_keyframe(7, 0)
        await settle()
        assert got == [] and feedback == []
        assert edge.unsealed == 1 and edge.auth_failed == 1
        assert edge.stats.unknown_stream == 1 and edge.stats.wrong_source == 1
        assert origin.stats.unknown_stream == 1

        # 6. a replayed datagram: delivered once
        raw_sent: list[bytes] = []
        real_sendto = origin.sock.sendto

        class Tap:
            def sendto(self, data, addr):
                raw_sent.append(data)
                return real_sendto(data, addr)
        good._sock = Tap()
        good.send(0, rtp(5))
        await settle()
        origin.sock.sendto(raw_sent[-1], edge.address)
        await settle()
        assert [p for _, _, p in got] == [rtp(5)]
        assert edge.auth_failed == 2
        del stray
    finally:
        origin.close()
        edge.close()
        stranger.close()


async def test_keepalive_end_directions_are_checked() -> None:
    origin, edge, _, _, ready, ends = await pair()
    try:
        down, up = new_key(), new_key()
        link_in = edge.pull(5, origin.address, down, up)
        link_out = origin.offer(edge.address, 5, down, up)
        # an UP message sent as DOWN (the origin's keys swapped) is not authentic
        origin._send_sealed(link_out, END, 0, UP, b"x")
        await settle()
        assert ends == [] and ready == []
        edge.keepalive(link_in, UP)
        origin.keepalive(link_out, DOWN)
        await settle()
        assert ready == [5] and link_in.heard > 0 and link_out.heard > 0
    finally:
        origin.close()
        edge.close()


async def test_sender_reports_pass_down_only() -> None:
    srs: list[tuple[int, int, int, int]] = []
    origin = await SealedRelay.bind("127.0.0.1", 0, on_sender_report=lambda *a: srs.append(a))
    edge = await SealedRelay.bind("127.0.0.1", 0, on_sender_report=lambda *a: srs.append(a))
    try:
        down, up = new_key(), new_key()
        link_in = edge.pull(3, origin.address, down, up)
        link_out = origin.offer(edge.address, 3, down, up)
        origin.sender_report(link_out, 1, 0xE000000012345678, 90000)
        edge.sender_report(link_in, 1, 1, 2)  # an edge does not send SRs: the origin ignores one
        await settle()
        assert srs == [(3, 1, 0xE000000012345678, 90000)]
    finally:
        origin.close()
        edge.close()
