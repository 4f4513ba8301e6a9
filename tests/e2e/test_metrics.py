"""inboundVideoRate / outboundVideoRate (spec §7), REST metrics and /metrics against what real clients measured.

The official SDK compares `videoRate` with the browser's getStats byte counts (RFC 3550 payload octets),
reading them when each message arrives. These tests do the same with aiortc: the publisher's outbound-rtp
`bytesSent`, and for players (aiortc's inbound-rtp has no byte count) the payload bytes its video
receiver was handed, read at each message's arrival.

The rate comparison runs the server in its own process, as in production: in the test's process its
event loop would share the CPU with three aiortc peers encoding and decoding, fall behind reading its
socket on a loaded machine, and measure that backlog instead of the stream.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import peers
from tests.support.lossy import LossyRelay
from tests.support.wcs_client import WcsClient

SAMPLES = 6  # rate messages compared (each covers ~1 s)
TOLERANCE = 0.10


@pytest.fixture
async def server(make_server):
    return await make_server(connect_timeout=10.0)  # several decoding peers share this process


class ServerProcess:
    """`python -m webcall` on 127.0.0.1, every port chosen by the system (read back from its banner)."""

    def __init__(self, proc: asyncio.subprocess.Process, http: int, rest: int) -> None:
        self.proc, self.url, self.rest_url = proc, f"ws://127.0.0.1:{http}/", f"http://127.0.0.1:{rest}"

    async def client(self) -> WcsClient:
        return await WcsClient.connect(self.url)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while (await rest(self, "/health"))[1]["sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


@pytest.fixture(params=["auto", "1"], ids=["workers", "one-process"])
async def separate_server(request):
    """With media workers (the default on a machine of several cores: the rates come from the workers' reports,
    once a second on their own timers) and in one process (the sampler reads live media counters)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", "0", "--media-host", "127.0.0.1",
        "--media-port", "0", "--media-tcp-port", "0", "--public-ip", "127.0.0.1", "--rest-host", "127.0.0.1", "--rest-port", "0", "--tls-port", "-1",
        "--workers", request.param, "--log-level", "warning", stdout=asyncio.subprocess.PIPE)
    try:
        banner = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        found = re.search(r"http://localhost:(\d+)/.*REST http://127\.0\.0\.1:(\d+)/", banner)
        assert found, banner
        yield ServerProcess(proc, int(found[1]), int(found[2]))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def outbound_video_stats(publisher: peers.Publisher) -> tuple[int, int]:
    """(bytesSent, packetsSent) of the publisher's video, from aiortc's own getStats()."""
    report = await publisher.pc.getStats()
    for stats in report.values():
        if stats.type == "outbound-rtp" and stats.kind == "video":
            return stats.bytesSent, stats.packetsSent
    raise AssertionError("no outbound-rtp video stats")


class ReceivedVideo:
    """Counts the RTP payload bytes and packets that a player's video receiver is handed."""

    def __init__(self, player: peers.Player) -> None:
        self.octets = self.packets = 0
        receiver = next(t.receiver for t in player.pc.getTransceivers() if t.kind == "video")
        original = receiver._handle_rtp_packet

        async def counting(packet, arrival_time_ms: int) -> None:
            self.octets += len(packet.payload)
            self.packets += 1
            await original(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = counting

    async def read(self) -> tuple[int, int]:
        return self.octets, self.packets


async def inbound_packets_received(player: peers.Player) -> int:
    report = await player.pc.getStats()
    return sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp" and s.kind == "video")


async def collect(client, message: str, msid: str, read: Callable[[], Awaitable[tuple[int, int]]],
                  n: int) -> list[tuple[dict[str, Any], int, float]]:
    """n+1 rate messages, each with the client's own byte count read the moment it arrived. The first two are
    let go: a player's first second holds its join burst (the GOP replayed at once), which the server counts
    in the interval of the media worker's report and the client in the interval of the message's arrival, up
    to a rate interval apart; the steady state is what is compared."""
    since = len(client.messages)
    for _ in range(2):
        await client.wait_for(message, mediaSessionId=msid, since=since, timeout=5)
    out = []
    for _ in range(n + 1):
        m = await client.wait_for(message, mediaSessionId=msid, since=since, timeout=5)
        octets, _ = await read()
        out.append((m["data"][0], octets, time.monotonic()))
    return out


def compare(samples: list[tuple[dict[str, Any], int, float]]) -> tuple[float, float, float]:
    """(server mean videoRate, client bit/s over the same span, worst single-interval deviation)."""
    (_, first_octets, first_t), (_, last_octets, last_t) = samples[0], samples[-1]
    client = (last_octets - first_octets) * 8 / (last_t - first_t)
    server = sum(s[0]["videoRate"] for s in samples[1:]) / (len(samples) - 1)
    worst = 0.0
    for (_, o0, t0), (msg, o1, t1) in zip(samples, samples[1:]):
        interval_client = (o1 - o0) * 8 / (t1 - t0)
        worst = max(worst, abs(msg["videoRate"] - interval_client) / interval_client)
    return server, client, worst


async def rest(server, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        if body is None:
            async with http.get(server.rest_url + path) as r:
                return r.status, await r.json()
        async with http.post(server.rest_url + path, json=body) as r:
            return r.status, await r.json()


async def scrape(server) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.rest_url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """One sample by its exposed name (counters' families drop `_total`, histograms' add `_bucket`...)."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError((name, labels))


async def test_video_rates_agree_with_client_stats(separate_server) -> None:
    server = separate_server
    pub_client = await server.client()
    publisher = await peers.publish(pub_client, "rates", busy=True, width=320, height=240)
    await publisher.wait_status("PUBLISHING", timeout=10)
    clients = [await server.client() for _ in range(2)]
    players = [await peers.play(c, "rates") for c in clients]
    received = [ReceivedVideo(p) for p in players]
    await asyncio.gather(*(p.wait_decoded_frames(10, timeout=10) for p in players))

    async def read_publisher() -> tuple[int, int]:
        return await outbound_video_stats(publisher)

    pub_packets_before = (await outbound_video_stats(publisher))[1]
    player_packets_before = [await inbound_packets_received(p) for p in players]
    frames_before, t_before = publisher.video_track.frames_sent, time.monotonic()
    results = await asyncio.gather(
        collect(pub_client, "inboundVideoRate", publisher.media_session_id, read_publisher, SAMPLES),
        *(collect(c, "outboundVideoRate", p.media_session_id, r.read, SAMPLES)
          for c, p, r in zip(clients, players, received)),
    )
    client_fps = (publisher.video_track.frames_sent - frames_before) / (time.monotonic() - t_before)

    # REST metrics are the same samples: read right after a message, they hold its numbers.
    for _ in range(3):
        since = len(pub_client.messages)
        message = (await pub_client.wait_for("inboundVideoRate", since=since, timeout=5))["data"][0]
        status, found = await rest(server, "/rest-api/stream/find",
                                   {"name": "rates", "published": True, "display": ["metrics"]})
        assert status == 200 and len(found) == 1
        if len(pub_client.find("inboundVideoRate", since=since)) == 1:  # no newer sample meanwhile
            break
    rest_metrics = found[0]["metrics"]
    assert (rest_metrics["VIDEO_RATE"], rest_metrics["VIDEO_FPS"], rest_metrics["VIDEO_NACK"]) == (
        message["videoRate"], message["fps"], message["nack"])

    report = []
    for label, samples in zip(["publisher (inboundVideoRate vs bytesSent)", "player 1 (outboundVideoRate)",
                               "player 2 (outboundVideoRate)"], results):
        server_rate, client_rate, worst = compare(samples)
        report.append(f"{label}: server {server_rate / 1000:.1f} kbit/s, client {client_rate / 1000:.1f} kbit/s, "
                      f"diff {100 * (server_rate - client_rate) / client_rate:+.1f}%, worst 1-s interval "
                      f"{100 * worst:.1f}%")
        assert abs(server_rate - client_rate) <= TOLERANCE * client_rate, report[-1]
        # The SDK takes the bytes its browser counted between two messages as a second's worth (× 8, against
        # videoRate: flashphoner.js detectConnectionQuality): per-second rates are not enough, the messages must
        # come a second apart (here ± a quarter, for this process's own delays in reading them).
        gaps = [round(t1 - t0, 3) for (_, _, t0), (_, _, t1) in zip(samples, samples[1:])]
        assert all(0.75 <= gap <= 1.25 for gap in gaps), (label, gaps)
        for msg, _, _ in samples[1:]:
            assert set(msg) == {"mediaSessionId", "videoRate", "fps", "nack", "pli", "lostPackets", "width",
                                "height"}
            assert (msg["width"], msg["height"]) == (320, 240)
            assert all(isinstance(msg[k], int) and msg[k] >= 0 for k in ("nack", "pli", "lostPackets"))
        server_fps = sum(s[0]["fps"] for s in samples[1:]) / (len(samples) - 1)
        report.append(f"  fps: server {server_fps:.1f}, publisher's encoder {client_fps:.1f}")
        assert abs(server_fps - client_fps) <= max(3.0, 0.15 * client_fps), report[-1]
    print("\n" + "\n".join(report))

    # The players' own packet counts (aiortc inbound-rtp) follow what the publisher sent.
    sent = (await outbound_video_stats(publisher))[1] - pub_packets_before
    for player, before in zip(players, player_packets_before):
        got = await inbound_packets_received(player) - before
        assert abs(got - sent) <= 0.05 * sent + 10, (got, sent)

    # /metrics: gauges now, then totals that survive the streams' end.
    families = await scrape(server)
    assert value(families, "webcall_sessions") == 3
    assert value(families, "webcall_streams") == 1 and value(families, "webcall_players") == 2
    received_packets = value(families, "webcall_rtp_packets_received_total", kind="video")
    assert received_packets > 0 and value(families, "webcall_rtp_packets_sent_total", kind="video") > 0
    fanouts = value(families, "webcall_fanout_seconds_count")
    assert fanouts > 0 and value(families, "webcall_fanout_seconds_bucket", le="+Inf") == fanouts
    assert value(families, "webcall_fanout_players_total") >= fanouts
    # The thread's CPU time in the timed fan-outs: some, and never more than their duration.
    assert 0 < value(families, "webcall_fanout_cpu_seconds_total") <= value(families, "webcall_fanout_seconds_sum") * 1.01

    for player in players:
        await player.stop()
    await publisher.stop()
    for client in [pub_client, *clients]:
        await client.close()
    await server.wait_idle()
    families = await scrape(server)
    assert value(families, "webcall_sessions") == 0 and value(families, "webcall_players") == 0
    assert value(families, "webcall_rtp_packets_received_total", kind="video") >= received_packets


class OutageRelay(LossyRelay):
    """LossyRelay that can also drop every RTP/RTCP datagram from the clients for a while."""

    outage = False

    def _drop(self, data: bytes, direction: str) -> bool:
        if self.outage and direction == "up" and 127 < data[0] < 192:
            self.dropped[direction] += 1
            return True
        return super()._drop(data, direction)


async def test_loss_shows_in_nack_and_lost_packets(server) -> None:
    relay = OutageRelay(("127.0.0.1", server.server.media_port), 0.05)
    relay_port = await relay.start()
    server.hub.plane.candidates = (("127.0.0.1", relay_port),)
    try:
        pub_client = await server.client()
        publisher = await peers.publish(pub_client, "lossy-rates", busy=True)  # several packets per frame
        await publisher.wait_status("PUBLISHING", timeout=10)
        client = await server.client()
        player = await peers.play(client, "lossy-rates")
        await player.wait_decoded_frames(10, timeout=15)
        await asyncio.sleep(2.0)  # random loss on both legs: NACKs both ways
        relay.outage = True  # then 2.5 s of nothing from the publisher: a gap too long to NACK
        await asyncio.sleep(2.5)
        relay.outage = False
        await player.wait_frames(10, since=len(player.frames), timeout=10)  # media flows again (test_loss
        # checks the picture; here only the counters matter)

        def last(message: str, msid: str) -> dict[str, Any]:
            return client_of[message].find(message, mediaSessionId=msid)[-1]["data"][0]

        client_of = {"inboundVideoRate": pub_client, "outboundVideoRate": client}
        deadline = time.monotonic() + 8
        while True:
            inbound = last("inboundVideoRate", publisher.media_session_id)
            outbound = last("outboundVideoRate", player.media_session_id)
            if inbound["lostPackets"] > 0 and outbound["lostPackets"] > 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        producer = server.hub.registry.find("lossy-rates").producers["video"]
        print(f"\ninbound {inbound}\noutbound {outbound}\nrelay dropped {relay.dropped}, "
              f"publisher packets {producer.packets}, recovered {producer.recovered}")
        assert inbound["nack"] > 0, inbound  # NACKs the server sent to the publisher
        assert inbound["pli"] > 0, inbound  # the outage is too long to NACK: a keyframe request instead
        assert inbound["lostPackets"] > 0, inbound
        assert outbound["nack"] > 0, outbound  # NACKs the player sent
        assert outbound["lostPackets"] > 0, outbound  # from the player's receiver reports

        status, found = await rest(server, "/rest-api/stream/find", {"name": "lossy-rates", "published": True})
        assert status == 200
        metrics = found[0]["metrics"]
        assert metrics["VIDEO_NACK"] >= inbound["nack"] and metrics["VIDEO_LOST"] > 0
        families = await scrape(server)
        assert value(families, "webcall_nacks_sent_total", kind="video") >= inbound["nack"]
        assert value(families, "webcall_nacks_received_total", kind="video") >= outbound["nack"]

        await player.stop()
        await publisher.stop()
        await client.close()
        await pub_client.close()
        await server.wait_empty()
    finally:
        relay.close()
