"""ICE over TCP (webcall/media/tcp.py): RFC 6544 passive candidates, RFC 4571 framing, media over it.

aiortc has no ICE-TCP, so media tests put it behind tests/support/tcpshim.py, which carries its datagrams over
one TCP connection per client to the server's TCP port, framed per RFC 4571: the server sees STUN, DTLS and SRTP
over TCP only. Raw-socket tests speak STUN over the framing themselves, and send the bad input.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import uuid

import aiohttp
from aioice import stun

from tests.support import peers
from tests.support.tcpshim import TcpShim

FRAMES = 20
async def prometheus_value(server, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.rest_url}/metrics") as r:
            text = await r.text()
    return float(re.search(rf"^{name} (\S+)$", text, re.M)[1])


CANDIDATE = re.compile(r"a=candidate:\S+ 1 (udp|tcp) (\d+) (\S+) (\d+) typ host( tcptype passive)?")


def candidates(sdp: str) -> list[tuple[str, int, str, int, bool]]:
    return [(m[1], int(m[2]), m[3], int(m[4]), bool(m[5])) for m in CANDIDATE.finditer(sdp)]


def ice_credentials(sdp: str) -> tuple[str, str]:
    return re.search(r"a=ice-ufrag:(\S+)", sdp)[1], re.search(r"a=ice-pwd:(\S+)", sdp)[1]


async def assert_plays(player: peers.Player, frames: int = FRAMES, since: int = 0) -> None:
    await player.wait_decoded_frames(frames, timeout=15, since=since)
    counters = [f.counter for f in player.frames[since:] if f.counter is not None]
    assert all(b > a for a, b in zip(counters, counters[1:])), "counter must strictly increase"


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """True once the server closed the connection (EOF or reset) within `timeout`."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), timeout)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def binding_request(server_ufrag: str, client_ufrag: str, server_pwd: str) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{server_ufrag}:{client_ufrag}"
    request.attributes["PRIORITY"] = 1845501695
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(server_pwd.encode())
    request.add_fingerprint()
    return bytes(request)


async def test_answer_announces_tcp_after_udp_and_alone_for_transport_tcp(server) -> None:
    tcp_port = server.server.media_tcp_port
    assert tcp_port > 0
    client = await server.client()
    pub = await peers.publish(client, "both")
    await pub.wait_status("PUBLISHING", timeout=10)
    found = candidates(pub.answer_sdp)
    udp = [c for c in found if c[0] == "udp"]
    tcp = [c for c in found if c[0] == "tcp"]
    assert udp and tcp and all(c[4] for c in tcp), found
    assert {c[3] for c in tcp} == {tcp_port} and {c[3] for c in udp} == {server.server.media_port}
    assert min(c[1] for c in udp) > max(c[1] for c in tcp), "UDP must be preferred by priority"

    # The SDK's transport: "TCP" (spec §3.2): only passive TCP candidates, and the m-line names the TCP port.
    other = await server.client()
    pub_tcp = await peers.publish(other, "tcp only", extra_fields={"transport": "TCP"})
    found = candidates(pub_tcp.answer_sdp)
    assert found and all(c[0] == "tcp" and c[4] and c[3] == tcp_port for c in found), found
    assert f"m=video {tcp_port} " in pub_tcp.answer_sdp
    await pub_tcp.close()
    await pub.close()
    await client.close()
    await other.close()
    await server.wait_empty(10)


async def test_no_tcp_candidates_when_off(make_server) -> None:
    server = await make_server(media_tcp_port="off")
    assert server.server.media_tcp_port == 0 and server.port.tcp_server is None
    client = await server.client()
    pub = await peers.publish(client, "udp", extra_fields={"transport": "TCP"})  # asks TCP: gets UDP
    await pub.wait_status("PUBLISHING", timeout=10)
    assert {c[0] for c in candidates(pub.answer_sdp)} == {"udp"}
    await pub.close()
    await client.close()


async def publish_offer_only(client, name: str) -> tuple[str, str, str]:
    """publishStream with a real aiortc offer, transport TCP, and no ICE agent behind it: the test is the client.
    Returns (the answer, the offer's ice-ufrag, the mediaSessionId)."""
    pc = peers.create_peer_connection()
    pc.addTransceiver("audio", direction="sendonly")
    pc.addTransceiver("video", direction="sendonly")
    offer = await pc.createOffer()
    await pc.close()
    media_session_id = str(uuid.uuid1())
    await client.send("publishStream", {
        "mediaSessionId": media_session_id, "name": name, "published": True, "hasVideo": True, "hasAudio": True,
        "status": "PENDING", "record": False, "mediaProvider": "WebRTC", "sdp": peers.strip_candidates(offer.sdp),
        "constraints": {"audio": True, "video": True}, "transport": "TCP"})
    msg = await client.wait_for(lambda m: m.get("message") == "setRemoteSDP", timeout=5)
    return msg["data"][1], ice_credentials(offer.sdp)[0], media_session_id


async def test_stun_binding_over_rfc4571_framing(server) -> None:
    """A STUN check over TCP, split over writes at awkward places: answered with the connection's address,
    signed with the server's password; closing that connection ends the stream (the client is gone)."""
    client = await server.client()
    answer, client_ufrag, media_session_id = await publish_offer_only(client, "raw stun")
    server_ufrag, server_pwd = ice_credentials(answer)
    reader, writer = await open_raw(server.server.media_tcp_port)
    request = binding_request(server_ufrag, client_ufrag, server_pwd)
    framed = struct.pack("!H", len(request)) + request
    for piece in (framed[:1], framed[1:7], framed[7:]):  # half a length, half a message, the rest
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)
    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
    response = stun.parse_message(await reader.readexactly(size))
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == stun.parse_message(request).transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info("sockname")[:2]
    assert response.check_message_integrity(server_pwd.encode())
    assert any(not isinstance(a, tuple) for a in server.port.by_addr)

    writer.close()  # the only path of this client: its stream fails at once, not after the connect timeout
    started = asyncio.get_running_loop().time()
    msg = await client.wait_for(lambda m: m.get("message") == "notifyStreamStatusEvent"
                                and m["data"][0].get("status") == "UNPUBLISHED", timeout=3)  # as a hang-up
    assert msg["data"][0]["mediaSessionId"] == media_session_id
    assert asyncio.get_running_loop().time() - started < 2.0  # the connect timeout is 4 s in tests
    await client.close()
    await server.wait_empty(10)


async def test_bad_input_on_the_tcp_port(server, monkeypatch) -> None:
    """Each bad connection is closed and counted; a stream playing over UDP meanwhile does not notice."""
    monkeypatch.setattr("webcall.media.port.UNVERIFIED_TIMEOUT", 1.0)
    monkeypatch.setattr("webcall.media.port.MAX_UNVERIFIED_LINKS", 4)
    pub_client, play_client = await server.client(), await server.client()
    pub = await peers.publish(pub_client, "steady")
    await pub.wait_status("PUBLISHING", timeout=10)
    player = await peers.play(play_client, "steady")
    await assert_plays(player)
    port = server.server.media_tcp_port
    refused = server.port.tcp_refused

    cases = {
        "oversized": b"\xff\xff" + os.urandom(100),
        "zero length": b"\x00\x00",
        "garbage": struct.pack("!H", 40) + b"\x80" + os.urandom(39),  # looks like RTP, from nobody
        "not a check": struct.pack("!H", 20) + bytes(stun.Message(stun.Method.BINDING, stun.Class.INDICATION)),
        "wrong ufrag": b"",  # filled below
    }
    request = binding_request("nobody00", "client00", "x" * 24)
    cases["wrong ufrag"] = struct.pack("!H", len(request)) + request
    for name, data in cases.items():
        reader, writer = await open_raw(port)
        writer.write(data)
        await writer.drain()
        assert await closed_by_server(reader), f"{name}: connection not closed"
        writer.close()
    assert server.port.tcp_refused == refused + len(cases)
    assert await prometheus_value(server, "webcall_ice_tcp_refused_total") == refused + len(cases)

    # Half a frame, then silence: kept while it may still be completed, closed after UNVERIFIED_TIMEOUT.
    reader, writer = await open_raw(port)
    writer.write(struct.pack("!H", 100) + b"\x00" * 10)
    await writer.drain()
    assert not await closed_by_server(reader, 0.5)
    assert await closed_by_server(reader, 3.0)
    writer.close()

    # More unverified connections at once than allowed: the surplus is closed at once.
    held = [await open_raw(port) for _ in range(4)]
    await asyncio.sleep(0.1)
    reader, writer = await open_raw(port)
    assert await closed_by_server(reader, 2.0)
    writer.close()
    for _, w in held:
        w.close()

    since = len(player.frames)
    await assert_plays(player, since=since)  # the UDP stream went on
    assert player.status == "PLAYING" and pub.status == "PUBLISHING"
    await player.close()
    await pub.close()
    await pub_client.close()
    await play_client.close()
    await server.wait_empty(10)
    assert server.port.links == set()


async def _through_shim(server, shim_target_port: int, **shim_args) -> TcpShim:
    shim = TcpShim(("127.0.0.1", shim_target_port), **shim_args)
    shim_port = await shim.start()
    server.hub.plane.candidates = (("127.0.0.1", shim_port),)  # aiortc reaches the server only through the shim
    return shim


async def test_publish_and_play_over_tcp(server) -> None:
    """A publisher and a player whose media is all TCP, and a UDP player of the same stream."""
    udp_candidates = server.hub.plane.candidates
    shim = await _through_shim(server, server.server.media_tcp_port)
    try:
        pub_client, tcp_client = await server.client(), await server.client()
        pub = await peers.publish(pub_client, "over tcp")
        await pub.wait_status("PUBLISHING", timeout=10)
        tcp_player = await peers.play(tcp_client, "over tcp")
        server.hub.plane.candidates = udp_candidates
        udp_client = await server.client()
        udp_player = await peers.play(udp_client, "over tcp")
        await asyncio.gather(assert_plays(tcp_player), assert_plays(udp_player))
        await tcp_player.wait_audio_frames(20, timeout=10)
        assert len(shim.connections) == 2 and shim.frames_up > 20 and shim.frames_down > 20
        links = [a for a in server.port.by_addr if not isinstance(a, tuple)]
        assert len(links) == 2 and all(link.frames_in > 0 for link in links)
        for p in (tcp_player, udp_player, pub):
            await p.close()
        for c in (pub_client, tcp_client, udp_client):
            await c.close()
        await server.wait_empty(10)
        await asyncio.gather(*(c.closed.wait() for c in shim.connections.values()))  # closed by the server
    finally:
        shim.close()


async def test_two_workers_over_tcp(make_server) -> None:
    """--workers 2 --placement spread: each worker has its own TCP port; publisher on one, player on the other."""
    server = await make_server(workers="2", placement="spread")
    plane = server.server.workers
    tcp_ports = plane.media_tcp_ports()
    assert len(set(tcp_ports)) == 2 and all(tcp_ports)
    shims = [TcpShim(("127.0.0.1", p)) for p in tcp_ports]
    try:
        for worker, shim in enumerate(shims):
            plane.announce_override[worker] = ("127.0.0.1", await shim.start())
        pub_client = await server.client()
        pub = await peers.publish(pub_client, "two workers tcp")
        await pub.wait_status("PUBLISHING", timeout=10)
        clients = [await server.client() for _ in range(2)]
        players = [await peers.play(c, "two workers tcp") for c in clients]
        await asyncio.gather(*(assert_plays(p) for p in players))
        assert all(shim.connections for shim in shims), "both workers carried TCP media"
        for _ in range(50):  # the workers report their ports' counters twice a rate interval
            if await prometheus_value(server, "webcall_ice_tcp_connections") == 3:
                break
            await asyncio.sleep(0.1)
        assert await prometheus_value(server, "webcall_ice_tcp_connections") == 3
        for p in (*players, pub):
            await p.close()
        for c in (pub_client, *clients):
            await c.close()
        await server.wait_empty(10)
    finally:
        for shim in shims:
            shim.close()


async def test_slow_tcp_reader_does_not_slow_udp_players(server, monkeypatch) -> None:
    """A TCP player that stops reading: its packets are dropped once its bounded buffer is full (UDP players keep
    their frame rate meanwhile), and when it reads again its video resumes at a keyframe, decodable."""
    monkeypatch.setattr("webcall.media.tcp.WRITE_HIGH_WATER", 16 * 1024)
    monkeypatch.setattr("webcall.media.tcp.WRITE_LOW_WATER", 4 * 1024)
    monkeypatch.setattr("webcall.media.tcp.SEND_BUFFER", 8 * 1024)
    udp_candidates = server.hub.plane.candidates
    pub_client, slow_client, udp_client = await server.client(), await server.client(), await server.client()
    pub = await peers.publish(pub_client, "slow reader", busy=True)
    await pub.wait_status("PUBLISHING", timeout=10)
    shim = await _through_shim(server, server.server.media_tcp_port, recv_buffer=4096)
    try:
        slow = await peers.play(slow_client, "slow reader")
        server.hub.plane.candidates = udp_candidates
        fast = await peers.play(udp_client, "slow reader")
        await asyncio.gather(assert_plays(slow), assert_plays(fast))
        link = next(a for a in server.port.by_addr if not isinstance(a, tuple))

        shim.pause_reading()
        fast_before = len(fast.frames)
        deadline = asyncio.get_running_loop().time() + 15
        while link.dropped_out < 50 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        assert link.dropped_out >= 50, f"only {link.dropped_out} packets dropped: the buffer is not bounded"
        assert link.transport.get_write_buffer_size() <= 64 * 1024
        await asyncio.sleep(1.0)
        # The UDP player during the stall, in the publisher's frames (its counter): what it missed and its longest
        # hole. Wall-clock rates would measure this shared machine's load on the aiortc decoders instead.
        counters = [f.counter for f in fast.frames[fast_before:] if f.counter is not None]
        covered = len(set(counters)) / (counters[-1] - counters[0] + 1)
        hole = max(b - a for a, b in zip(counters, counters[1:]))
        assert covered >= 0.9, f"UDP player lost {1 - covered:.0%} of the frames while the TCP reader was stalled"
        assert hole <= 10, f"UDP player skipped {hole - 1} frames at once while the TCP reader was stalled"

        shim.resume_reading()
        since = len(slow.frames)
        resumed = asyncio.get_running_loop().time()
        await slow.wait_decoded_frames(30, timeout=15, since=since)  # decodable again, from a keyframe on
        intact = [f.counter for f in slow.frames[since:] if f.pattern_present and f.counter is not None]
        assert all(b > a for a, b in zip(intact[-20:], intact[-20:][1:])), str(intact)  # and moving forward
        print(f"slow TCP reader: {link.dropped_out} packets dropped; UDP player meanwhile {len(counters)} frames, "
              f"{covered:.0%} of the publisher's, longest hole {hole - 1} frames; TCP player decoding again "
              f"{slow.frames[since].t - resumed:.2f} s after it read again")
        assert slow.status == "PLAYING"
        for p in (slow, fast, pub):
            await p.close()
        for c in (pub_client, slow_client, udp_client):
            await c.close()
        await server.wait_empty(10)
    finally:
        shim.close()
