"""A webcall cluster on Redis, end to end: a real redis-server (no persistence, on a free port) and three nodes
as separate processes (--cluster-redis), aiortc publishers and players decoding the pattern.

Publish anywhere, play anywhere (one relay per stream and node), one namespace, cluster-wide REST and /lb,
and the failures: an origin or an edge killed with SIGKILL, Redis restarted, an origin cut off (SIGSTOP).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from typing import Any

import pytest

import base64
import io

import av

from tests.support import peers
from tests.support.cluster import TTL, Node, RedisServer, start_node
from tests.support.media import pattern_present, read_frame_counter
from tests.support.wcs_client import WcsClient
from tests.support.whip_client import whep_play
from webcall.wcs.status import Info, OwnInfo

NAME_IN_USE = Info.STREAM_NAME_ALREADY_IN_USE


class Cluster:
    def __init__(self, redis: RedisServer, nodes: list[Node]) -> None:
        self.redis, self.nodes = redis, nodes
        self.a, self.b, *rest = nodes
        self.c: Node | None = rest[0] if rest else None  # a two-node test has no C
        self.clients: list[WcsClient] = []
        self.streams: list[peers._Stream] = []

    async def client(self, node: Node) -> WcsClient:
        c = await node.client()
        self.clients.append(c)
        return c

    async def publish(self, node: Node, name: str, **kw: Any) -> peers.Publisher:
        pub = await peers.publish(await self.client(node), name, width=320, height=240, **kw)
        self.streams.append(pub)
        return pub

    async def play(self, node: Node, name: str, **kw: Any) -> peers.Player:
        player = await peers.play(await self.client(node), name, **kw)
        self.streams.append(player)
        return player

    async def close(self) -> None:
        for s in self.streams:
            await s.close()
        for c in self.clients:
            await c.close()
        await asyncio.gather(*(n.stop() for n in self.nodes))
        await self.redis.stop()


@pytest.fixture
async def cluster(tmp_path):
    redis = RedisServer()
    await redis.start()
    nodes = await asyncio.gather(*(start_node(n, redis.url, tmp_path) for n in "ABC"))
    c = Cluster(redis, list(nodes))
    yield c
    await c.close()


async def eventually(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check()` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached in {timeout}s: {what}")
        await asyncio.sleep(interval)


async def state(node: Node) -> dict:
    status, body = await node.rest_call("/cluster")
    assert status == 200, body
    return body


async def available(client: WcsClient, name: str) -> bool:
    request_id = str(uuid.uuid1())
    await client.send("availableStream", {"mediaSessionId": request_id, "name": name})
    msg = await client.wait_for("availableStream", mediaSessionId=request_id, timeout=5)
    return msg["data"][0]["status"] == "true"


# --- (1) one namespace, cluster-wide queries --------------------------------------------------------------


async def test_one_namespace_and_cluster_wide_queries(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    pub = await cluster.publish(a, "one")
    await pub.wait_status("PUBLISHING", 10)

    # the same name on another node: FAILED with WCS's own text, and A's stream goes on
    dup = await cluster.publish(b, "one", raise_on_failure=False)
    assert dup.status == "FAILED" and dup.info == NAME_IN_USE, (dup.status, dup.info)
    assert pub.status == "PUBLISHING"

    assert await available(await cluster.client(c), "one")
    assert not await available(await cluster.client(c), "nobody-publishes-this")

    async def listed_on_c():
        status, body = await c.rest_call("/rest-api/stream/find_all")
        return status == 200 and [o for o in body if o["name"] == "one" and o["published"]]
    [obj] = await eventually(listed_on_c, 3, "C's find_all lists A's stream")
    assert obj["node"] == "A" and obj["mediaSessionId"] == pub.media_session_id

    status, found = await b.rest_call("/rest-api/stream/find", {"name": "one", "published": True})
    assert status == 200 and [o["node"] for o in found] == ["A"]
    status, _ = await b.rest_call("/rest-api/stream/find", {"name": "none"})
    assert status == 404
    status, streams = await c.get("/streams")
    assert status == 200 and [(s["name"], s["node"]) for s in streams] == [("one", "A")]

    # unpublished on A: the name is free in the whole cluster at once (released, not left to expire)
    await pub.stop()
    again = await cluster.publish(b, "one")
    await again.wait_status("PUBLISHING", 10)


# --- (2) publish anywhere, play anywhere: one relay per (stream, node) --------------------------------------


async def test_play_on_other_nodes_one_relay_per_node_and_linger(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    pub = await cluster.publish(a, "live")
    await pub.wait_status("PUBLISHING", 10)

    on_b = [await cluster.play(b, "live") for _ in range(10)]
    on_c = await cluster.play(c, "live")
    await asyncio.gather(*(p.wait_decoded_frames(10, timeout=20) for p in on_b + [on_c]))
    for p in on_b + [on_c]:
        assert p.intact_ratio() > 0.9, p.counter_stats()

    serving = (await state(a))["serving"]
    assert sorted((s["name"], s["edge"]) for s in serving) == [("live", "B"), ("live", "C")], serving
    pulled_b = (await state(b))["pulled"]
    assert [(p["name"], p["origin"], p["readers"]) for p in pulled_b] == [("live", "A", 10)]
    # the publisher's sender reports reach the relayed copy (B's players' SRs keep audio and video in sync)
    await eventually(lambda: _all_synced(b), 5, "B's relayed tracks have the publisher's sender reports")

    # the relay outlives the last player on B by a few seconds (LINGER), then ends on both sides
    for p in on_b:
        await p.stop()
    await asyncio.sleep(1.0)
    assert (await state(b))["pulled"], "the relay ended before its linger"
    await eventually(lambda: _empty(b, "pulled"), 6, "B's relay ends after its linger")
    await eventually(lambda: _edges(a, ["C"]), 3, "A stops serving B")
    # C still plays
    since = len(on_c.frames)
    await on_c.wait_decoded_frames(10, timeout=10, since=since)


async def _all_synced(node: Node) -> bool:
    return all(p["sender_reports"] for p in (await state(node))["pulled"])


async def _empty(node: Node, key: str) -> bool:
    return not (await state(node))[key]


async def _edges(node: Node, edges: list[str]) -> bool:
    return sorted(s["edge"] for s in (await state(node))["serving"]) == edges


async def test_loss_on_the_relay_is_recovered_by_nacks_to_the_origin(tmp_path, cluster: Cluster) -> None:
    """B drops 5 % of the relayed media it receives (WEBCALL_RELAY_TEST_LOSS, as between workers): B's ring
    NACKs what it lost, A resends it from its own, and B's player decodes an intact picture."""
    lossy = await start_node("L", cluster.redis.url, tmp_path, env={"WEBCALL_RELAY_TEST_LOSS": "0.05"})
    cluster.nodes.append(lossy)
    pub = await cluster.publish(cluster.a, "lossy")
    await pub.wait_status("PUBLISHING", 10)
    player = await cluster.play(lossy, "lossy")
    await player.wait_decoded_frames(30, timeout=20)
    since = len(player.frames)
    await asyncio.sleep(3.0)
    assert player.intact_ratio(since) > 0.9, player.counter_stats(since)
    state_l, state_a = await state(lossy), await state(cluster.a)
    assert state_l["relay"]["test_dropped"] > 0 and state_l["relay"]["nacks_sent"] > 0, state_l
    assert state_a["retransmitted"] > 0, state_a


# --- (3) failures ---------------------------------------------------------------------------------------


async def test_origin_killed_players_told_and_name_freed(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    pub = await cluster.publish(a, "doomed")
    await pub.wait_status("PUBLISHING", 10)
    player = await cluster.play(b, "doomed")
    await player.wait_decoded_frames(5, timeout=15)

    await a.kill()
    killed = time.monotonic()
    msg = await player.client.wait_for(lambda m: player._is_status_msg(m) and m["data"][0]["status"] in (
        "STOPPED", "FAILED"), timeout=6)
    told = time.monotonic() - killed
    assert msg["data"][0]["info"], msg
    assert told < 6.0, told

    # its entries expire from Redis: the name can be published again (on C), within the ttl
    async def republish():
        p = await peers.publish(await cluster.client(c), "doomed", width=320, height=240, raise_on_failure=False)
        cluster.streams.append(p)
        return p if p.status != "FAILED" else None
    again = await eventually(republish, TTL + 3, "the name is free again", interval=0.3)
    await again.wait_status("PUBLISHING", 10)
    assert time.monotonic() - killed < TTL + 4
    status, nodes = await b.get("/lb")
    assert status == 200


async def test_edge_killed_origin_stops_sending(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    pub = await cluster.publish(a, "edge")
    await pub.wait_status("PUBLISHING", 10)
    player = await cluster.play(b, "edge")
    await player.wait_decoded_frames(5, timeout=15)
    assert await _edges(a, ["B"])
    sent_before = (await state(a))["relay"]["sent"]

    await b.kill()
    killed = time.monotonic()
    await eventually(lambda: _edges(a, []), TTL + 2, "A stops serving the dead edge")
    assert time.monotonic() - killed < TTL + 2
    sent = (await state(a))["relay"]["sent"]
    await asyncio.sleep(1.0)
    assert (await state(a))["relay"]["sent"] == sent, "A still sends into the void"
    assert sent > sent_before
    assert pub.status == "PUBLISHING"


async def test_redis_restart_streams_flow_new_pulls_fail_then_reregister(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    pub = await cluster.publish(a, "steady")
    await pub.wait_status("PUBLISHING", 10)
    player = await cluster.play(b, "steady")
    await player.wait_decoded_frames(5, timeout=15)

    await cluster.redis.stop()  # down, and its data gone (no persistence): as a restart loses it
    since = len(player.frames)
    await asyncio.sleep(4.0)  # longer than the ttl: every entry would have expired
    await player.wait_decoded_frames(60, timeout=5, since=since)  # the relay kept flowing (~30 fps)
    assert player.status == "PLAYING"

    # a new cross-node play fails at once with a clear info (it does not wait)
    late = await cluster.play(c, "steady", raise_on_failure=False)
    assert late.status == "FAILED" and late.info == OwnInfo.CLUSTER_UNAVAILABLE, (late.status, late.info)
    # so does a new publish: its name cannot be checked against the other nodes
    fresh = await cluster.publish(b, "fresh", raise_on_failure=False)
    assert fresh.status == "FAILED" and fresh.info == OwnInfo.CLUSTER_UNAVAILABLE

    cluster.redis = RedisServer(cluster.redis.port)  # back, empty, on the same address
    await cluster.redis.start()

    async def pulls_again():
        p = await peers.play(await cluster.client(c), "steady", raise_on_failure=False)
        cluster.streams.append(p)
        return p if p.status != "FAILED" else None
    again = await eventually(pulls_again, 5, "A re-registered its stream", interval=0.5)
    await again.wait_decoded_frames(5, timeout=15)
    # the name is A's again: B cannot take it
    dup = await cluster.publish(b, "steady", raise_on_failure=False)
    assert dup.status == "FAILED" and dup.info == NAME_IN_USE


async def test_origin_cut_off_players_told_nothing_hangs(cluster: Cluster) -> None:
    """A partition between the origin and the rest: the origin frozen (SIGSTOP) sends and answers nothing."""
    a, b = cluster.a, cluster.b
    pub = await cluster.publish(a, "island")
    await pub.wait_status("PUBLISHING", 10)
    player = await cluster.play(b, "island")
    await player.wait_decoded_frames(5, timeout=15)

    a.proc.send_signal(signal.SIGSTOP)
    try:
        cut = time.monotonic()
        msg = await player.client.wait_for(lambda m: player._is_status_msg(m) and m["data"][0]["status"] in (
            "STOPPED", "FAILED"), timeout=6)
        assert msg["data"][0]["info"] == OwnInfo.ORIGIN_LOST, msg
        assert time.monotonic() - cut < 6.0
        # B answers at once meanwhile: a new play of the lost stream fails clearly instead of hanging
        started = time.monotonic()
        late = await cluster.play(b, "island", raise_on_failure=False, timeout=8)
        assert late.status == "FAILED" and late.info, late.status
        assert time.monotonic() - started < 5.0
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # the origin comes back: it re-registers, ends its relay to B (silent), and its stream can be played again
    await eventually(lambda: _edges(a, []), TTL + 3, "A ends its relay to the silent edge")

    async def plays_again():
        p = await peers.play(await cluster.client(b), "island", raise_on_failure=False)
        cluster.streams.append(p)
        return p if p.status != "FAILED" else None
    again = await eventually(plays_again, 6, "the stream plays again on B", interval=0.5)
    await again.wait_decoded_frames(5, timeout=15)


# --- (4) /lb, REST terminate on any node -------------------------------------------------------------------


async def test_lb_answers_the_least_loaded_node(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    for name in ("lb1", "lb2"):
        await (await cluster.publish(a, name)).wait_status("PUBLISHING", 10)
    await cluster.play(b, "lb1")

    async def lb_is_c():
        answers = [await n.get("/lb") for n in (a, b, c)]
        return all(s == 200 and body == {"server": "127.0.0.1", "ws": c.http, "wss": 0} for s, body in answers)
    await eventually(lb_is_c, 3, "every node's /lb names C (the one with no stream)")


async def test_rest_terminate_from_any_node(cluster: Cluster) -> None:
    a, b, c = cluster.a, cluster.b, cluster.c
    pub = await cluster.publish(a, "stopme")
    await pub.wait_status("PUBLISHING", 10)
    player = await cluster.play(b, "stopme")
    await player.wait_status("PLAYING", 10)

    async def listed():
        status, body = await c.rest_call("/rest-api/stream/find", {"mediaSessionId": pub.media_session_id})
        return status == 200
    await eventually(listed, 3, "C sees A's stream")
    status, body = await c.rest_call("/rest-api/stream/terminate", {"mediaSessionId": pub.media_session_id})
    assert status == 200 and body == {"terminated": [pub.media_session_id]}, body
    await pub.wait_status("UNPUBLISHED", 5)
    assert pub.info == Info.STOPPED_BY_REST_TERMINATE
    msg = await player.client.wait_for(lambda m: player._is_status_msg(m) and m["data"][0]["status"] == "STOPPED",
                                       timeout=5)
    assert msg["data"][0]["info"] == Info.STOPPED_BY_REST_TERMINATE, msg


# --- chaining ---------------------------------------------------------------------------------------------


async def test_chain_when_the_origin_relays_are_full(tmp_path) -> None:
    """A serves one outgoing relay at most (--relay-max-out 1): B pulls from A, C then from B (A -> B -> C)."""
    redis = RedisServer()
    await redis.start()
    nodes = await asyncio.gather(start_node("A", redis.url, tmp_path, "--relay-max-out", "1"),
                                 start_node("B", redis.url, tmp_path), start_node("C", redis.url, tmp_path))
    cluster = Cluster(redis, list(nodes))
    a, b, c = nodes
    try:
        pub = await cluster.publish(a, "chain")
        await pub.wait_status("PUBLISHING", 10)
        on_b = await cluster.play(b, "chain")
        await on_b.wait_decoded_frames(5, timeout=15)

        async def b_listed():  # B's copy is in its node entry in Redis (C finds who relays it there)
            status, body = await c.rest_call("/rest-api/stream/find", {"name": "chain", "published": False})
            return status == 200 and any(o["node"] == "B" for o in body)
        await eventually(b_listed, 3, "B's player is listed")
        on_c = await cluster.play(c, "chain")
        await on_c.wait_decoded_frames(10, timeout=15)
        assert on_c.intact_ratio() > 0.9, on_c.counter_stats()
        assert [(s["name"], s["edge"]) for s in (await state(a))["serving"]] == [("chain", "B")]
        assert [(s["name"], s["edge"]) for s in (await state(b))["serving"]] == [("chain", "C")]
        assert [(p["name"], p["origin"]) for p in (await state(c))["pulled"]] == [("chain", "B")]

        # B's own player leaves: B keeps its copy while it relays it to C
        await on_b.stop()
        await asyncio.sleep(4.0)  # longer than the linger
        since = len(on_c.frames)
        await on_c.wait_decoded_frames(10, timeout=5, since=since)
        # the publisher stops: the end travels down the chain with its reason
        await pub.stop()
        msg = await on_c.client.wait_for(lambda m: on_c._is_status_msg(m) and m["data"][0]["status"] == "STOPPED",
                                         timeout=5)
        assert msg["data"][0]["info"] == Info.STOPPED_BY_PUBLISHER_STOP, msg
    finally:
        await cluster.close()


# --- (5) cluster nodes with media workers: a stream crossing nodes lands in a worker -----------------------


async def test_workers_publish_on_a_play_on_b_spread_then_origin_killed(tmp_path) -> None:
    """A and B run two media workers each (B spreads its players over both), C runs in one process. The pulled
    copy lands in one of B's workers and is relayed on to the other as a local publication would be; one relay
    between nodes per (stream, node) however many players; A's worker serves the pull from its own socket.
    Then A is killed: B's and C's players are told within 6 s."""
    redis = RedisServer()
    await redis.start()
    a, b, c = await asyncio.gather(start_node("A", redis.url, tmp_path, "--workers", "2"),
                                   start_node("B", redis.url, tmp_path, "--workers", "2", "--placement", "spread"),
                                   start_node("C", redis.url, tmp_path))
    cluster = Cluster(redis, [a, b, c])
    try:
        pub = await cluster.publish(a, "wk")
        await pub.wait_status("PUBLISHING", 10)
        on_b = [await cluster.play(b, "wk") for _ in range(4)]
        on_c = await cluster.play(c, "wk")
        await asyncio.gather(*(p.wait_decoded_frames(10, timeout=20) for p in on_b + [on_c]))
        for p in on_b + [on_c]:
            assert p.intact_ratio() > 0.9, p.counter_stats()
        state_a, state_b = await state(a), await state(b)
        assert state_a["workers"] == 2 and state_b["workers"] == 2
        assert sorted((s["name"], s["edge"]) for s in state_a["serving"]) == [("wk", "B"), ("wk", "C")]
        assert [(p["name"], p["origin"], p["readers"]) for p in state_b["pulled"]] == [("wk", "A", 4)]
        # the copy's players on B's other worker read it through the relay between workers
        assert "relay started stream=wk" in b.log(), b.log()[-2000:]
        await eventually(lambda: _all_synced(b), 5, "B's copy has the publisher's sender reports")
        assert (await state(a))["relay"]["sent"] > 0

        async def sized():  # the copy's counters reach B's control process (REST metrics of B's players)
            status, body = await b.rest_call("/rest-api/stream/find", {"name": "wk", "published": False})
            return status == 200 and [o for o in body if o["node"] == "B"
                                      and o.get("metrics", {}).get("VIDEO_WIDTH") == 320]
        assert len(await eventually(sized, 5, "B's players' metrics show the copy's picture size")) == 4

        await a.kill()
        killed = time.monotonic()
        for p in on_b + [on_c]:
            msg = await p.client.wait_for(lambda m, p=p: p._is_status_msg(m) and m["data"][0]["status"] in (
                "STOPPED", "FAILED"), timeout=6)
            assert msg["data"][0]["info"], msg
        assert time.monotonic() - killed < 6.0
        await eventually(lambda: _empty(b, "pulled"), 3, "B's copy is gone")
    finally:
        await cluster.close()


async def test_events_whep_snapshots_and_publisher_limit_across_nodes(tmp_path, cluster: Cluster) -> None:
    """What else crosses nodes: the publisher's stream events reach players on another node (W, two media
    workers); a WHEP player on B plays A's stream (pulled as for a WCS player); a snapshot asked on C of A's stream
    shows its picture (C pulls it); W's copy of A's stream does not count against W's --max-publishers 1."""
    w = await start_node("W", cluster.redis.url, tmp_path, "--workers", "2", "--max-publishers", "1")
    cluster.nodes.append(w)
    pub = await cluster.publish(cluster.a, "ev")
    await pub.wait_status("PUBLISHING", 10)
    on_w = await cluster.play(w, "ev")
    whep = await whep_play(f"http://127.0.0.1:{cluster.b.http}", "ev")
    cluster.streams.append(whep)
    await asyncio.gather(on_w.wait_decoded_frames(10, timeout=20), whep.wait_decoded_frames(10, timeout=20))
    assert whep.intact_ratio() > 0.9, whep.counter_stats()
    assert [p["name"] for p in (await state(cluster.b))["pulled"]] == ["ev"]

    mine = await cluster.publish(w, "mine")  # the copy of "ev" is not W's publisher: W's one slot is free
    await mine.wait_status("PUBLISHING", 10)

    await pub.client.send("sendStreamEvent", {"mediaSessionId": pub.media_session_id, "type": "audioMuted"})
    await pub.client.send("sendStreamEvent", {"mediaSessionId": pub.media_session_id, "type": "data",
                                              "payload": {"text": "hi"}})
    muted = await on_w.client.wait_for("notifyStreamEvent", mediaSessionId=on_w.media_session_id, timeout=5)
    assert muted["data"][0]["type"] == "audioMuted" and muted["data"][0]["payload"]["streamName"] == "ev", muted
    data = await on_w.client.wait_for("notifyStreamEvent", mediaSessionId=on_w.media_session_id, timeout=5)
    assert data["data"][0]["type"] == "data" and data["data"][0]["payload"] == {"text": "hi"}, data

    asker = await cluster.client(cluster.c)
    msid = str(uuid.uuid1())
    await asker.send("snapshot", {"name": "ev", "mediaSessionId": msid})
    msg = await asker.wait_for("notifyStreamEvent", mediaSessionId=msid, timeout=10)
    event = msg["data"][0]
    assert event["type"] == "snapshotCompleted", event
    frame = next(av.open(io.BytesIO(base64.b64decode(event["payload"]["snapshot"]))).decode(video=0))
    assert (frame.width, frame.height) == (320, 240)
    assert read_frame_counter(frame) is not None and pattern_present(frame)


async def test_workers_linger_edge_killed_and_loss(tmp_path) -> None:
    """Both ends in workers: A (two workers) serves B and L (two workers each). B's player leaves: B's copy ends
    after its linger and A's worker stops serving B (the edge's END). L drops 5 % of what it receives
    (WEBCALL_RELAY_TEST_LOSS): its worker NACKs A's worker, which resends, and L's player decodes an intact
    picture. L is killed: A's worker stops sending to it within the ttl (no traffic into the void)."""
    redis = RedisServer()
    await redis.start()
    a, b, lossy = await asyncio.gather(
        start_node("A", redis.url, tmp_path, "--workers", "2"), start_node("B", redis.url, tmp_path, "--workers", "2"),
        start_node("L", redis.url, tmp_path, "--workers", "2", env={"WEBCALL_RELAY_TEST_LOSS": "0.05"}))
    cluster = Cluster(redis, [a, b, lossy])
    try:
        pub = await cluster.publish(a, "wl")
        await pub.wait_status("PUBLISHING", 10)
        on_b, on_l = await cluster.play(b, "wl"), await cluster.play(lossy, "wl")
        await asyncio.gather(on_b.wait_decoded_frames(10, timeout=20), on_l.wait_decoded_frames(30, timeout=20))
        assert await _edges(a, ["B", "L"])

        await on_b.stop()
        await eventually(lambda: _empty(b, "pulled"), 7, "B's copy ends after its linger")
        await eventually(lambda: _edges(a, ["L"]), 5, "A's worker stops serving B")

        since = len(on_l.frames)
        await asyncio.sleep(2.0)
        assert on_l.intact_ratio(since) > 0.9, on_l.counter_stats(since)
        state_l, state_a = await state(lossy), await state(a)
        assert state_l["relay"]["test_dropped"] > 0 and state_l["relay"]["nacks_sent"] > 0, state_l
        assert state_a["retransmitted"] > 0, state_a

        await lossy.kill()
        killed = time.monotonic()
        await eventually(lambda: _edges(a, []), TTL + 2, "A's worker stops serving the dead edge")

        async def quiet() -> bool:  # A's workers report their counters every --rate-interval (1 s)
            sent = (await state(a))["relay"]["sent"]
            await asyncio.sleep(1.2)
            return (await state(a))["relay"]["sent"] == sent
        await eventually(quiet, 5, "A stops sending into the void")
        assert time.monotonic() - killed < TTL + 7
        assert pub.status == "PUBLISHING"
    finally:
        await cluster.close()


class _SlowFirstConnection:
    """A TCP proxy to Redis whose first connection says nothing for `delay` s: a node's first directory call,
    its registration, comes back late (under the directory's 1 s timeout), as from a Redis far away."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.connections == 1:
            await asyncio.sleep(self.delay)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_node_serves_once_it_is_a_member(tmp_path) -> None:
    """A node whose Redis answers late serves nothing (signalling, /health) until it has joined: a stream
    published on it the moment it is up is claimed at once, and a play on another node right after PUBLISHING
    finds it. (Before, A answered /health and took the publish before joining: B said "Stream not found".)"""
    redis = RedisServer()
    await redis.start()
    proxy = _SlowFirstConnection(redis.port, 0.8)
    slow_url = await proxy.start()
    a, b = await asyncio.gather(start_node("A", slow_url, tmp_path), start_node("B", redis.url, tmp_path))
    cluster = Cluster(redis, [a, b])
    try:
        pub = await cluster.publish(a, "early")
        await pub.wait_status("PUBLISHING", 10)
        on_b = await cluster.play(b, "early")
        await on_b.wait_decoded_frames(5, timeout=15)
        assert proxy.connections >= 1
    finally:
        await cluster.close()
        await proxy.stop()
