"""Production guardrails, end to end: each configured limit refuses with a clear FAILED status or `fail`, and
counts the refusal in /metrics (`webcall_refusals_total{limit}`); a publisher whose media stops is FAILED
"Failed by RTP activity" after --rtp-activity-timeout (one process and media workers) and its players STOPPED;
one over the bitrate ceiling for the grace period is FAILED too."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest
from aiortc import MediaStreamTrack

from tests.conftest import SHAPES
from tests.support import peers
from tests.support.hostile import UdpProbe, stun_header
from tests.support.media import PatternVideoTrack, ToneAudioTrack
from tests.support.wcs_client import WcsClient
from webcall.media.ingest import MEDIA_LOCK


async def refusals(server) -> dict[str, int]:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.rest_url + "/metrics") as response:
            text = await response.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("webcall_refusals_total{"):
            label, value = line.split("} ")
            out[label.split('"')[1]] = int(float(value))
    return out


async def test_sessions_per_ip(make_server, monkeypatch) -> None:
    server = await make_server(max_sessions_per_ip=2)
    # Loopback is exempt (a reverse proxy on the host)...
    local = [await server.client() for _ in range(3)]
    for client in local:
        await client.close()
    await server.wait_empty()
    # ...so the tests' 127.0.0.1 plays a remote address from here on.
    monkeypatch.setattr("webcall.wcs.hub._loopback", lambda ip: False)
    first, second = await server.client(), await server.client()
    third = await WcsClient.open(server.url)
    msg = await third.wait_for("fail", timeout=5)
    assert msg["data"][0]["info"] == "Too many sessions from this address", msg
    await third.wait_closed(5)
    assert (await refusals(server))["sessions_per_ip"] == 1
    await first.close()
    deadline = time.monotonic() + 5  # the one that left frees its place
    while len(server.hub.sessions) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    fourth = await server.client()
    for client in (second, third, fourth):
        await client.close()


async def test_streams_per_session_players_per_stream_and_publishers(make_server) -> None:
    server = await make_server(max_streams_per_session=2, max_players_per_stream=1, max_publishers=1)
    client = await server.client()
    publisher = await peers.publish(client, "lim", width=160, height=120)
    await publisher.wait_status("PUBLISHING", timeout=10)
    other = await server.client()
    second_pub = await peers.publish(other, "lim2", width=160, height=120, raise_on_failure=False)
    assert (second_pub.status, second_pub.info) == ("FAILED", "Too many publishers on this server")
    player = await peers.play(client, "lim")  # the session's second stream
    await player.wait_status("PLAYING", timeout=10)
    crowd = await peers.play(other, "lim", raise_on_failure=False)
    assert (crowd.status, crowd.info) == ("FAILED", "Too many players of this stream")
    third = await peers.play(client, "lim", raise_on_failure=False)  # the session's third
    assert (third.status, third.info) == ("FAILED", "Too many streams in this session")
    counted = await refusals(server)
    assert (counted["publishers"], counted["players_per_stream"], counted["streams_per_session"]) == (1, 1, 1)
    for stream in (third, crowd, player, second_pub, publisher):
        await stream.close()
    await other.close()
    await client.close()
    await server.wait_empty()


async def test_messages_per_second_fail_then_close(make_server) -> None:
    server = await make_server(max_messages_per_second=5.0)  # bursts of 10
    client = await server.client()
    for _ in range(40):
        await client.send("ping", [])
    msg = await client.wait_for("fail", timeout=5)
    assert msg["data"][0]["info"] == "Too many messages per second", msg
    await client.wait_closed(5)  # 20 refusals are 20 protocol errors: the session is closed
    assert (await refusals(server))["messages_per_second"] >= 20
    await server.wait_empty()


async def test_a_burst_of_sdk_logs_over_the_rate_is_dropped_not_failed(make_server) -> None:
    """The SDK's startDebug() (the Stream Diagnostic page) sends every log line it kept as one pushLogs each, at
    once: ~100 from Firefox. Over the rate they are dropped; the session goes on and gets no `fail`."""
    server = await make_server(max_messages_per_second=5.0)  # bursts of 10
    client = await server.client()
    for i in range(60):
        await client.send("pushLogs", {"logs": f"12:00:00 DEBUG core - line {i}\n"})
    await client.send("sessionDebug", {"command": "start"})
    await asyncio.sleep(1.0)  # the bucket fills again
    request_id = str(uuid.uuid1())
    await client.send("availableStream", {"mediaSessionId": request_id, "name": "nothing-here"})
    answer = await client.wait_for("availableStream", mediaSessionId=request_id, timeout=5)
    assert answer["data"][0]["status"] == "false", answer
    assert not client.closed and not [m for m in client.messages if m.get("message") == "fail"], client.messages
    assert (await refusals(server))["messages_per_second"] >= 45  # counted all the same
    await client.close()
    await server.wait_empty()


async def test_a_flood_of_sdk_logs_still_closes_the_session(make_server) -> None:
    """The quiet drop has its own allowance (20 s of the rate): past it, logs count as any flood does."""
    server = await make_server(max_messages_per_second=5.0)  # bursts of 10, quiet drops up to 100 more
    client = await server.client()
    for i in range(400):
        if client.closed:
            break
        try:
            await client.send("pushLogs", {"logs": f"line {i}"})
        except (ConnectionError, RuntimeError):
            break  # the server already closed the socket
    await client.wait_closed(5)
    fails = [m for m in client.messages if m.get("message") == "fail"]
    assert len(fails) == 20 and fails[0]["data"][0]["info"] == "Too many messages per second", fails[:1]
    await server.wait_empty()


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_unverified_datagrams_dropped_per_address(make_server, shape) -> None:
    server = await make_server(max_unverified_datagrams=10, **SHAPES[shape])
    media_port = server.server.media_port
    probe = await UdpProbe.open()
    try:
        for _ in range(200):  # bogus binding requests (no USERNAME): dropped after the first 10 a second
            probe.send(stun_header(0), ("127.0.0.1", media_port))
        deadline = time.monotonic() + 5  # with workers the count arrives with the next stats report
        while (await refusals(server))["unverified_datagrams"] < 150 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert 150 <= (await refusals(server))["unverified_datagrams"] <= 190
    finally:
        probe.close()
    client = await server.client()  # a real client from another address is not affected
    publisher = await peers.publish(client, "after-flood", width=160, height=120)
    await publisher.wait_status("PUBLISHING", timeout=10)
    await publisher.close()
    await client.close()


class StoppableTrack(MediaStreamTrack):
    """A live track until `cut` is set: then it never yields again (the publisher's network is gone; its
    WebSocket and ICE consent stay up)."""

    def __init__(self, inner: MediaStreamTrack, cut: asyncio.Event) -> None:
        super().__init__()
        self.kind, self.inner, self.cut = inner.kind, inner, cut

    async def recv(self):
        if self.cut.is_set():
            await asyncio.Event().wait()
        return await self.inner.recv()


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_publisher_whose_media_stops_fails_by_rtp_activity(make_server, shape) -> None:
    timeout = 1.5
    server = await make_server(rtp_activity_timeout=timeout, **SHAPES[shape])
    client, viewer = await server.client(), await server.client()
    cut = asyncio.Event()
    publisher = await peers.publish(client, "cut", video_track=StoppableTrack(PatternVideoTrack(160, 120, 15), cut),
                                    audio_track=StoppableTrack(ToneAudioTrack(), cut))
    await publisher.wait_status("PUBLISHING", timeout=10)
    player = await peers.play(viewer, "cut")
    await player.wait_status("PLAYING", timeout=10)
    await asyncio.sleep(timeout + 0.5)  # media flowing: longer than the timeout, and nothing fails
    assert publisher.status == "PUBLISHING", publisher.statuses
    cut.set()
    cut_at = time.monotonic()
    msg = await publisher.wait_status("FAILED", timeout=timeout + 4)
    elapsed = time.monotonic() - cut_at
    assert msg["data"][0]["info"] == "Failed by RTP activity", msg
    # counted from the newest packet's arrival, on the publisher's one-second tick (counted from the tick that
    # first saw the silence, it would be up to a second later)
    assert timeout - 0.2 <= elapsed <= timeout + 1.3, elapsed
    await player.wait_status("STOPPED", timeout=3)
    await publisher.close()
    await player.close()
    await client.close()
    await viewer.close()
    await server.wait_empty()


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_publisher_over_the_bitrate_ceiling_fails(make_server, shape) -> None:
    server = await make_server(bitrate_ceiling=40_000, bitrate_grace=1.0, **SHAPES[shape])
    client = await server.client()
    publisher = await peers.publish(client, "loud", width=320, height=240)  # aiortc VP8 starts at ~500 kbit/s
    await publisher.wait_status("PUBLISHING", timeout=10)
    started = time.monotonic()
    msg = await publisher.wait_status("FAILED", timeout=8)
    assert msg["data"][0]["info"] == "Failed by incoming bitrate over the limit", msg
    assert time.monotonic() - started >= 0.5  # the grace period, not the first window
    deadline = time.monotonic() + 3  # with workers the count arrives with the next stats report
    while (await refusals(server))["publisher_bitrate"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert (await refusals(server))["publisher_bitrate"] == 1
    await publisher.close()
    await client.close()
    await server.wait_empty()


async def test_a_publishers_tick_takes_in_what_its_ingest_thread_queued(make_server) -> None:
    """The input watch and the keyframe cadence read the producers' counters and latest keyframe on the publisher's
    tick. With an ingest thread (media/ingest.py) those are up to a second behind the thread when no player is
    waiting, so the tick takes the thread's queue in first."""
    server = await make_server()
    client = await server.client()
    publisher = await peers.publish(client, "watched")
    await publisher.wait_status("PUBLISHING", timeout=10)
    endpoint = server.hub.registry.find("watched").endpoint
    ingest = endpoint.transport.ingest
    assert ingest is not None, "a publisher on UDP gets an ingest thread"
    deadline = time.monotonic() + 5
    while ingest.pending < 5:  # a backlog: packets the thread queued since the port last took its queue in
        assert time.monotonic() < deadline, "no backlog formed"
        await asyncio.sleep(0.01)
    held = MEDIA_LOCK.acquire()  # the thread queues nothing more meanwhile
    try:
        before = ingest.pending
        packets = endpoint.transport.rx_packets
        endpoint.on_tick(time.monotonic())
        assert ingest.pending == 0 and endpoint.transport.rx_packets > packets, before
    finally:
        MEDIA_LOCK.release(held)
    await publisher.close()
    await client.close()
    await server.wait_empty()


def client_hello() -> bytes:
    """A real DTLS 1.2 ClientHello (offering SRTP), from a pyOpenSSL client that will never go on."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


# A plaintext fatal alert (handshake_failure), DTLS 1.2, epoch 0, sequence 1: the stalled handshake ends at once.
FATAL_ALERT = bytes.fromhex("15fefd" "0000" "000000000001" "0002" "0228")


async def test_dtls_handshakes_in_progress_are_capped(make_server) -> None:
    from tests.support import hostile

    server = await make_server(max_dtls_handshakes=1, connect_timeout=8.0)
    staller, client = await server.client(), await server.client()
    probe = await UdpProbe.open()
    pc, sdp = await hostile.raw_offer("publish")
    msid = str(uuid.uuid1())
    try:
        # One handshake that starts and stalls: ICE done by hand, a ClientHello, then nothing.
        await staller.send("publishStream", hostile.stream_request("publish", "stall", sdp, msid))
        answer = (await staller.wait_for("setRemoteSDP", mediaSessionId=msid, timeout=5))["data"][1]
        ufrag, pwd = hostile.sdp_attr(answer, "ice-ufrag"), hostile.sdp_attr(answer, "ice-pwd")
        target = hostile.sdp_candidate(answer)
        request = hostile.binding_request(f"{ufrag}:{hostile.sdp_attr(sdp, 'ice-ufrag')}", pwd.encode())
        await probe.transact(request, target)
        probe.send(client_hello(), target)
        deadline = time.monotonic() + 3
        while not server.port.handshaking and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(server.port.handshaking) == 1
        # A real publisher now: its ClientHellos are dropped while the slot is taken...
        publisher = await peers.publish(client, "waits", width=160, height=120)
        await asyncio.sleep(2.0)
        assert publisher.status == "PENDING", publisher.statuses
        assert (await refusals(server))["dtls_handshakes"] >= 1
        # ...and get through once the stalled handshake ends (a retransmitted ClientHello is admitted).
        probe.send(FATAL_ALERT, target)
        failed = await staller.wait_for("notifyStreamStatusEvent", mediaSessionId=msid, timeout=5)
        assert failed["data"][0]["status"] == "FAILED", failed
        await publisher.wait_status("PUBLISHING", timeout=7)
        await publisher.close()
    finally:
        probe.close()
        await pc.close()
        await staller.close()
        await client.close()
    await server.wait_empty()
