"""This node's part of the cluster: claims on names, pulling streams from other nodes, serving their pulls.

A stream crossing nodes is a stream crossing workers (workers/relay.py, workers/media_worker.py's RelayOut),
sealed (cluster/sealed.py). The node that plays a name it does not publish (the edge) asks the directory
which node publishes it (the origin), chooses a relay id and two keys, and sends a pull request on the origin's
channel. The origin answers with the stream's tracks and accepts feedback for that relay from the edge's relay
address from then on; the edge builds a relayed source (its own producers and ring, as a worker's relayed
copy: its players' NACKs and late joiners are answered here, what it lacks is asked of the origin) and
publishes it in its own stream core under the name, so every later player of that name on this node reads
the same copy: one relay per (stream, node). The edge's first sealed keepalive tells the origin to start
(the current GOP first). Both sides send a keepalive every KEEPALIVE seconds; `timeout` seconds without an
authentic datagram from the other side ends the relay: on the edge its players hear "origin lost", the origin
stops sending into the void. The edge ends a relay LINGER seconds after its last reader left; the origin ends
its relays when its stream ends, saying why (END), so edge players hear the same reason as local ones.

With media workers (--workers 2+) the same happens one level down: the relay socket, the copies and the served
relays are the workers' (cluster/worker.py), the copy is a publication-like view in the worker plane (so the
node's other workers get it over the relay between workers), and this object only signals (Redis, the workers'
channels), keeps the claims and decides when a copy ends (its linger, or what a worker reports).

Stream events of a publication go to the nodes it is relayed to (through Redis, in order), and on down a chain.

Chaining (A -> B -> C): a node serves its relayed copies onward too. With --relay-max-out, an origin whose
outgoing relays are all taken answers "full", and the edge pulls from a node that relays the stream already
(one with players of it, the least loaded first); when a copy ends, the relays served from it end with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..media.port import TICK_INTERVAL, MediaPort
from ..media.producer import Producer
from ..media.router import Router
from ..protocol.sdp import Track
from ..streams.registry import EndReason, NameInUse, Source, StreamRegistry
from ..workers.media_worker import RelayOut, relayed_router
from ..workers.wire import track_from_wire, track_to_wire
from .directory import Directory, DirectoryUnavailable
from .reasons import ClusterRefused, Refusal
from .sealed import DOWN, UP, Link, SealedRelay, new_key

if TYPE_CHECKING:
    from ..workers.control import RemotePublisher, WorkerPlane

log = logging.getLogger("webcall.cluster")

KEEPALIVE = 0.5  # seconds between keepalives on each relay, both ways
LINGER = 3.0  # seconds a pulled stream outlives its last reader on this node (a quick re-join reuses it)
PULL_TIMEOUT = 3.0  # seconds to wait for the origin's answer to a pull request
ANSWER_TIMEOUT = 2.0  # seconds to wait for another node's answer (terminate)
LIST_TIMEOUT = 1.0  # seconds to wait for the other nodes' stream lists (REST find/find_all, /streams)


@dataclass
class ClusterSettings:
    redis_url: str
    node_id: str
    relay_bind: tuple[str, int]  # where the relay socket listens
    relay_host: str  # what other nodes send to (announced)
    server: str  # the host the SDK should connect to (/lb)
    ws_port: int = 8080
    wss_port: int = 0
    ttl: float = 3.0  # directory entries expire after this; relays end after this much silence
    max_out: int = 0  # outgoing relays this node serves at most (then edges chain from others); 0 = no limit


class PulledSource:
    """A stream of another node, relayed here: a source of this node's stream core (streams/registry.py)."""

    relayed = True  # not a publisher of this node: --max-publishers does not count it (wcs/session.py)

    def __init__(self, name: str, origin: str, rid: int, router: Router, width: int, height: int) -> None:
        self.name, self.origin, self.rid, self.router_ = name, origin, rid, router
        self.width, self.height = width, height
        self.tracks = list(router.tracks.values())  # relay track index = position here
        self.link: Link | None = None
        self.copy: RemotePublisher | None = None  # with media workers: the copy's view (held in copy.worker)
        self.started = time.monotonic()
        self.idle_since: float | None = None
        self.ended = False

    @property
    def closed(self) -> bool:
        return self.ended

    @property
    def live(self) -> bool:
        return not self.ended

    @property
    def router(self) -> Router | None:
        return None if self.ended else self.router_


class _HeldSource:
    """What RelayOut needs of a source: its router."""

    def __init__(self, router: Router) -> None:
        self.router = router


@dataclass
class OutRelay:
    """One of this node's publications sent to one edge."""

    name: str
    source: Source
    link: Link | None  # None with media workers: the relay is the worker's (cluster/worker.py)
    edge: str
    rid: int
    dest: tuple[str, int]
    worker: int | None = None  # with media workers: the worker that sends it
    created: float = field(default_factory=time.monotonic)
    out: RelayOut | None = None


class ClusterNode:
    def __init__(self, settings: ClusterSettings, registry: StreamRegistry, port: MediaPort | None, *,
                 describe: Callable[[], list[dict]], load: Callable[[], int],
                 terminate: Callable[[list[str]], list[str]], workers: WorkerPlane | None = None,
                 deliver_event: Callable[[str, str, object], int] | None = None) -> None:
        self.settings = settings
        # With media workers (--workers 2+) each worker holds its own relay socket between nodes (cluster/worker.py)
        # and this object only signals; without, the relay socket and the relayed copies are this process's.
        self.workers = workers
        self.worker_stats: dict[int, dict[str, Any]] = {}  # worker -> its latest relay counters
        if workers is not None:
            workers.on_cluster = self._worker_event
        self.node_id = settings.node_id
        self.registry = registry
        self.port = port
        self.describe = describe
        self.load = load
        self.terminate_local = terminate
        self.deliver_event = deliver_event  # a stream event of a pulled stream, to this node's players of it
        self.directory = Directory(settings.redis_url, settings.node_id, settings.ttl)
        self.relay: SealedRelay | None = None
        self.relay_address: tuple[str, int] = ("", 0)
        self.claims: dict[str, dict[str, Any]] = {}  # names this node publishes -> claim info
        self.pulled: dict[int, PulledSource] = {}  # by relay id
        self.outs: dict[tuple[int, tuple[str, int]], OutRelay] = {}
        self._pulling: dict[str, asyncio.Task] = {}
        self._answers: dict[int, asyncio.Future] = {}
        self._requests = 0
        self._loops: list[asyncio.Task] = []  # heartbeat, channel, tick
        self._tasks: list[asyncio.Task] = []  # one-off requests (releases, answers)
        self._last_keepalive = 0.0
        self._ordered: asyncio.Task | None = None  # the last in-order message being sent (stream events)
        self.directory_up = False
        self.retransmitted = 0
        registry.on_unpublish.append(self._unpublished)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.workers is not None:  # no socket here: each worker has its own, announced in its pull answers
            self.relay_address = (s.relay_host, self.workers.cluster_relay_port(0))
        else:
            await self._bind_relay()
        try:
            await self._register()
        except DirectoryUnavailable as exc:  # the node serves locally and registers once Redis answers
            log.warning("cluster directory unavailable at start: %s", exc)
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._heartbeat(), name="cluster-heartbeat"),
                       loop.create_task(self.directory.listen(self._request, self._channel_up), name="cluster-listen"),
                       loop.create_task(self._tick(), name="cluster-tick")]
        log.info("cluster node=%s relay=%s:%d redis=%s ttl=%.1fs workers=%d", self.node_id, *self.relay_address,
                 s.redis_url.split("@")[-1], s.ttl, self.workers.count if self.workers is not None else 0)

    async def _bind_relay(self) -> None:
        s = self.settings
        callbacks: dict[str, Any] = dict(on_packet=self._packet, on_keyframe_request=self._keyframe_request,
                                         on_nack=self._nack, on_end=self._end, on_ready=self._ready,
                                         on_sender_report=self._sender_report)
        try:  # on the announced address when it is this host's: our datagrams then come from it
            self.relay = await SealedRelay.bind(s.relay_bind[0], s.relay_bind[1], **callbacks)
        except OSError as exc:  # an address of a NAT in front of us: bind to any, announce it all the same
            log.info("cluster relay: cannot bind %s (%s), binding 0.0.0.0", s.relay_bind[0], exc)
            self.relay = await SealedRelay.bind("0.0.0.0", s.relay_bind[1], **callbacks)
        self.relay_address = (s.relay_host, self.relay.address[1])
        # Test-only, as between workers (workers/relay.py): drop this share of the relayed media received.
        self.relay.test_loss = float(os.environ.get("WEBCALL_RELAY_TEST_LOSS") or 0.0)

    async def stop(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._tasks:  # names being released, answers being sent: let them finish, within a bound
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for out in list(self.outs.values()):
            self._close_out(out, EndReason.PUBLISHER_STOPPED.value)
        for source in list(self.pulled.values()):
            self._end_pulled(source, EndReason.PUBLISHER_STOPPED, "node stopping")
        try:  # names and entries go at once, not after the ttl; bounded: Redis may be away
            await asyncio.wait_for(self._unregister(), 2.0)
        except (DirectoryUnavailable, TimeoutError):
            pass
        await self.directory.close()
        if self.relay is not None:
            self.relay.close()

    # --- the directory -------------------------------------------------------------------------------

    async def _unregister(self) -> None:
        for name in list(self.claims):
            await self.directory.release(name)
        await self.directory.unregister()

    def node_entry(self) -> dict[str, Any]:
        s = self.settings
        return {"id": self.node_id, "server": s.server, "ws": s.ws_port, "wss": s.wss_port,
                "relay": list(self.relay_address), "load": self.load(),
                "copies": sorted({p.name for p in self.pulled.values()})}  # where an edge may chain from

    async def _register(self) -> None:
        # Sources published here by a front end that does not claim first (WHIP): claimed after the fact.
        for source in self.registry.sources():
            if not isinstance(source, PulledSource) and source.name not in self.claims and source.router is not None:
                self.claims[source.name] = {"mediaSessionId": getattr(source, "media_session_id", "")}
        lost = await self.directory.register(self.node_entry(), dict(self.claims))
        if not self.directory_up:
            log.info("cluster registered node=%s names=%d", self.node_id, len(self.claims))
        self.directory_up = True
        for name in lost:  # another node claimed it while Redis was away from us: theirs now
            log.warning("cluster claim lost name=%s (another node holds it)", name)

    def _register_soon(self) -> None:
        async def register() -> None:
            try:
                await self._register()
            except DirectoryUnavailable:
                pass  # the heartbeat says so, and registers it when Redis is back
        task = asyncio.get_running_loop().create_task(register())
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ttl / 3)
            try:
                await self._register()
            except DirectoryUnavailable as exc:
                if self.directory_up:
                    log.warning("cluster directory unavailable: %s (relays keep flowing; new claims and pulls "
                                "fail until it is back)", exc)
                self.directory_up = False

    def _channel_up(self) -> None:
        log.debug("cluster channel subscribed node=%s", self.node_id)

    # --- what front ends ask -------------------------------------------------------------------------

    async def claim(self, name: str, media_session_id: str) -> None:
        """Claim `name` for a publication of this node; ClusterRefused if another node holds it or Redis is away."""
        info = {"mediaSessionId": media_session_id}
        try:
            ok = await self.directory.claim(name, info)
        except DirectoryUnavailable:
            raise ClusterRefused(Refusal.DIRECTORY_UNAVAILABLE) from None
        if not ok:
            raise ClusterRefused(Refusal.NAME_IN_USE)
        self.claims[name] = info

    def _unpublished(self, source: Source, reason: EndReason) -> None:
        """The stream core's event: a name is free on this node."""
        for out in [o for o in self.outs.values() if o.source is source]:  # chained relays end with it
            self._close_out(out, reason.value)
        if isinstance(source, PulledSource):
            return
        if self.claims.pop(source.name, None) is not None:
            task = asyncio.get_running_loop().create_task(self._release(source.name))
            self._tasks.append(task)
            task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _release(self, name: str) -> None:
        try:
            await self.directory.release(name)
        except DirectoryUnavailable:
            pass  # it expires within ttl

    async def available(self, name: str) -> bool:
        try:
            return await self.directory.owner(name) is not None
        except DirectoryUnavailable:
            return False

    async def pull(self, name: str) -> Source | None:
        """The stream `name` published on another node, relayed here (one relay per stream and node, however
        many players ask); None if no node publishes it. ClusterRefused if Redis or the origin do not answer."""
        source = self.registry.find(name)
        if source is not None:
            return source
        task = self._pulling.get(name)
        if task is None:
            task = self._pulling[name] = asyncio.get_running_loop().create_task(self._pull(name))
            task.add_done_callback(lambda t: self._pulling.pop(name, None))
        return await asyncio.shield(task)

    async def _pull(self, name: str) -> Source | None:
        worker: int | None = None
        dest = self.relay_address
        if self.workers is not None:  # the copy lands in the worker a publication would (its players follow it)
            worker = self.workers.quietest_worker()
            dest = (self.settings.relay_host, self.workers.cluster_relay_port(worker))
        try:
            owner = await self.directory.owner(name)
            if owner is None or owner[0] == self.node_id:
                return None
            found = await self._ask(owner[0], name, dest)
            if found is not None and found[1].get("full"):
                # The origin's outgoing relays are all taken: chain from a node that relays it already (A -> B -> C)
                found = None
                for node_id in await self._holders(name, exclude={owner[0], self.node_id}):
                    found = await self._ask(node_id, name, dest)
                    if found is not None and found[1].get("ok"):
                        break
                    found = None
        except DirectoryUnavailable:
            raise ClusterRefused(Refusal.DIRECTORY_UNAVAILABLE) from None
        if found is None or not found[1].get("ok"):
            return None
        node, reply, rid, down, up = found
        src = reply.get("relay") or node["relay"]  # the socket that sends it (a worker's, with media workers)
        if self.workers is not None and worker is not None:
            return self._pull_into_worker(name, node["id"], owner[0], reply, rid, down, up, src, worker)
        assert self.relay is not None
        source = PulledSource(name, node["id"], rid, self._router(rid, reply["tracks"]), reply.get("width", 0),
                              reply.get("height", 0))
        try:
            self.registry.publish(source)
        except NameInUse:  # published here meanwhile (by a local publisher): read that one
            return self.registry.find(name)
        self.pulled[rid] = source
        self._register_soon()  # its copy is in the node entry at once: an edge may chain from it
        source.link = self.relay.pull(rid, (src[0], int(src[1])), down, up)
        for _ in range(2):  # ready: the origin starts sending (GOP first) on the first one that arrives
            self.relay.keepalive(source.link, UP)
        log.info("cluster pull stream=%s from=%s origin=%s relay=%d", name, node["id"], owner[0], rid)
        return source

    def _pull_into_worker(self, name: str, node_id: str, origin: str, reply: dict, rid: int, down: bytes, up: bytes,
                          src: list, worker: int) -> Source | None:
        """With media workers: the copy is held in `worker` (cluster/worker.py); here only its view."""
        assert self.workers is not None
        listener = _CopyListener(self)
        copy = self.workers.pulled_copy(name, [track_from_wire(t) for t in reply["tracks"]], listener, worker)
        source = PulledSource(name, node_id, rid, copy.router, reply.get("width", 0),  # type: ignore[arg-type]
                              reply.get("height", 0))
        source.copy, listener.source = copy, source
        try:
            self.registry.publish(source)
        except NameInUse:  # published here meanwhile (by a local publisher): read that one
            self.workers.forget(copy)
            return self.registry.find(name)
        self.pulled[rid] = source
        self._register_soon()
        self.workers.notify(worker, "cluster_in", id=copy.id, rid=rid, name=name, src=[src[0], int(src[1])],
                            down=down.hex(), up=up.hex(), tracks=reply["tracks"])
        log.info("cluster pull stream=%s from=%s origin=%s relay=%d worker=%d", name, node_id, origin, rid, worker)
        return source

    async def _ask(self, node_id: str, name: str, dest: tuple[str, int]) -> tuple[dict, dict, int, bytes, bytes] | None:
        """Send `node_id` a pull request for `name`: (its entry, its answer, relay id, keys), None if it is gone;
        ClusterRefused if it does not answer."""
        node = await self.directory.node(node_id)
        if node is None:
            return None
        rid = random.randrange(1, 1 << 32)
        down, up = new_key(), new_key()
        answer = asyncio.get_running_loop().create_future()
        self._answers[rid] = answer
        try:
            listeners = await self.directory.send(node_id, {
                "op": "pull", "from": self.node_id, "rid": rid, "name": name, "dest": list(dest),
                "down": down.hex(), "up": up.hex()})
            if not listeners:
                raise ClusterRefused(Refusal.ORIGIN_UNREACHABLE)
            reply = await asyncio.wait_for(answer, PULL_TIMEOUT)
        except TimeoutError:
            raise ClusterRefused(Refusal.ORIGIN_UNREACHABLE) from None
        finally:
            self._answers.pop(rid, None)
        return node, reply, rid, down, up

    async def _holders(self, name: str, exclude: set[str]) -> list[str]:
        """Nodes that hold a relayed copy of `name`, fewest streams first."""
        nodes = await self.directory.nodes()
        holders = [n for n, entry in nodes.items() if n not in exclude and name in entry.get("copies", ())]
        return sorted(holders, key=lambda n: (nodes[n].get("load", 0), n))

    def _router(self, rid: int, tracks: list[dict]) -> Router:
        """The relayed copy's producers and track routers, as a worker builds its relayed copy."""
        assert self.port is not None
        return relayed_router(self.port, rid, tracks, lambda: self.relay, on_keyframe=self._resized(rid))

    def _resized(self, rid: int):
        def on_keyframe(producer: Producer, width: int, height: int) -> None:
            source = self.pulled.get(rid)
            if source is not None and width and (width, height) != (source.width, source.height):
                source.width, source.height = width, height
                self.registry.video_size(source, width, height)
        return on_keyframe

    async def remote_streams(self) -> list[dict]:
        """The stream objects of every other live node, asked of each (empty while Redis is away; a node that
        does not answer within LIST_TIMEOUT is left out)."""
        try:
            nodes = sorted(n for n in await self.directory.nodes() if n != self.node_id)
        except DirectoryUnavailable:
            return []
        answers = await self._ask_nodes({n: {"op": "list"} for n in nodes}, LIST_TIMEOUT)
        return [obj for answer in answers for obj in answer.get("streams", [])]

    async def terminate_remote(self, ids_by_node: dict[str, list[str]]) -> list[str]:
        """Ask each node to terminate these mediaSessionIds of its own; the ones they stopped."""
        answers = await self._ask_nodes({n: {"op": "terminate", "ids": ids} for n, ids in ids_by_node.items()},
                                        ANSWER_TIMEOUT)
        return [i for answer in answers for i in answer.get("ids", [])]

    async def _ask_nodes(self, requests: dict[str, dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        """Send each node its request at once; the answers that came within `timeout`."""
        loop = asyncio.get_running_loop()
        waits = []
        for node, message in requests.items():
            self._requests += 1
            req = -self._requests  # negative: never a relay id
            future = loop.create_future()
            self._answers[req] = future
            try:
                await self.directory.send(node, message | {"from": self.node_id, "req": req})
            except DirectoryUnavailable:
                self._answers.pop(req, None)
                continue
            waits.append((req, future))
        answers: list[dict[str, Any]] = []
        deadline = loop.time() + timeout
        for req, future in waits:
            try:
                answers.append(await asyncio.wait_for(future, max(0.0, deadline - loop.time())))
            except TimeoutError:
                pass
            finally:
                self._answers.pop(req, None)
        return answers

    async def least_loaded(self) -> dict[str, Any]:
        """The /lb answer (spec §15): the live node with the least load, this one if Redis is away."""
        try:
            nodes = list((await self.directory.nodes()).values())
        except DirectoryUnavailable:
            nodes = []
        best = min(nodes, key=lambda n: (n.get("load", 0), n.get("id", ""))) if nodes else self.node_entry()
        return {"server": best["server"], "ws": best["ws"], "wss": best["wss"]}

    # --- requests from other nodes (Redis channel) ---------------------------------------------------

    def _request(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op in ("pulled", "terminated", "listed"):
            future = self._answers.get(message.get("rid") if op == "pulled" else message.get("req"))
            if future is not None and not future.done():
                future.set_result(message)
        elif op == "pull":
            self._serve_pull(message)
        elif op == "list":
            streams = [obj | {"node": self.node_id} for obj in self.describe()]
            self._answer(message["from"], {"op": "listed", "req": message.get("req"), "streams": streams})
        elif op == "event":
            self._stream_event_from(message)
        elif op == "terminate":
            ids = [str(i) for i in message.get("ids", [])][:1000]
            stopped = self.terminate_local(ids)
            self._answer(message["from"], {"op": "terminated", "req": message.get("req"), "ids": stopped})

    def stream_event(self, name: str, event_type: str, payload: object) -> None:
        """A stream event (mute/unmute, sendStreamEvent) of `name`, to the nodes this node relays it to: each
        delivers it to its own players (and passes it on to the nodes it relays it to, when relays chain)."""
        for edge in sorted({o.edge for o in self.outs.values() if o.name == name}):
            self._answer(edge, {"op": "event", "from": self.node_id, "name": name, "type": event_type,
                                "payload": payload}, in_order=True)

    def _stream_event_from(self, message: dict[str, Any]) -> None:
        name = str(message.get("name", ""))
        source = self.registry.find(name)
        # only from the node this node pulls the stream from: no other node speaks for it here
        if not isinstance(source, PulledSource) or source.origin != message.get("from"):
            return
        event_type = str(message.get("type", ""))
        if self.deliver_event is not None:
            self.deliver_event(name, event_type, message.get("payload"))
        self.stream_event(name, event_type, message.get("payload"))

    def _answer(self, node: str, message: dict[str, Any], in_order: bool = False) -> None:
        """Send `message` to `node` without waiting; `in_order`: after the previous in-order one (stream events
        keep the order the publisher sent them in)."""
        before = self._ordered if in_order else None

        async def send() -> None:
            if before is not None and not before.done():
                await asyncio.wait([before])
            try:
                await self.directory.send(node, message)
            except DirectoryUnavailable:
                pass
        task = asyncio.get_running_loop().create_task(send())
        if in_order:
            self._ordered = task
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    def _serve_pull(self, message: dict[str, Any]) -> None:
        edge, rid, name = str(message["from"]), int(message["rid"]), str(message["name"])
        source = self.registry.find(name)
        router = source.router if source is not None else None
        if router is None:  # not here (any more), or not ready
            self._answer(edge, {"op": "pulled", "rid": rid, "ok": False})
            return
        limit = self.settings.max_out
        if limit and len(self.outs) >= limit:  # the edge may chain from a node that relays it already
            self._answer(edge, {"op": "pulled", "rid": rid, "ok": False, "full": True})
            return
        dest = (str(message["dest"][0]), int(message["dest"][1]))
        down, up = str(message["down"]), str(message["up"])
        publisher = getattr(router, "publisher", None)  # a RemoteRouter: the stream lives in a media worker
        if self.workers is not None and publisher is not None:  # that worker serves the pull, from its socket
            self.outs[(rid, dest)] = OutRelay(name, source, None, edge, rid, dest, publisher.worker)
            self.workers.notify(publisher.worker, "cluster_out", rid=rid, source=publisher.id, dest=list(dest),
                                down=down, up=up)
            tracks = [track_to_wire(t) for t in publisher.tracks]
            relay = [self.settings.relay_host, self.workers.cluster_relay_port(publisher.worker)]
        elif self.relay is not None:
            link = self.relay.offer(dest, rid, bytes.fromhex(down), bytes.fromhex(up))
            self.outs[(rid, dest)] = OutRelay(name, source, link, edge, rid, dest)
            tracks = [track_to_wire(Track(t.producer.kind, t.producer.kind, t.producer.codec,
                                          dict(t.producer.extensions), t.producer.ssrc, t.producer.rtx_ssrc))
                      for t in router.tracks.values()]
            relay = list(self.relay_address)
        else:
            self._answer(edge, {"op": "pulled", "rid": rid, "ok": False})
            return
        self._answer(edge, {"op": "pulled", "rid": rid, "ok": True, "tracks": tracks, "width": source.width,
                            "height": source.height, "relay": relay})
        log.info("cluster serving stream=%s to=%s relay=%d", name, edge, rid)

    # --- the relay's events --------------------------------------------------------------------------

    def _ready(self, link: Link) -> None:
        """An edge's first authentic datagram: start sending, its GOP first."""
        out = self.outs.get((link.stream_id, link.peer))
        if out is None or out.out is not None or self.relay is None:
            return
        router = out.source.router
        if router is None:
            return
        out.out = RelayOut(_HeldSource(router), self.relay.sealed_sender(link))  # type: ignore[arg-type]

    def _sender_report(self, rid: int, track: int, ntp: int, rtp: int) -> None:
        """The publisher's SR, passed on by the origin: our clock at its arrival stands for the publisher's
        (the relay's delay is in it, as a direct SR's network delay would be)."""
        source = self.pulled.get(rid)
        if source is not None and track < len(source.tracks):
            source.tracks[track].producer.on_sender_report(ntp, rtp, time.monotonic())

    def _packet(self, rid: int, track: int, packet: bytes) -> None:
        source = self.pulled.get(rid)
        if source is not None and track < len(source.tracks):
            source.tracks[track].producer.receive(packet, time.monotonic())

    def _outs_of(self, rid: int) -> list[OutRelay]:
        return [o for (r, _), o in self.outs.items() if r == rid and o.out is not None]

    def _keyframe_request(self, rid: int, track: int) -> None:
        for o in self._outs_of(rid):
            tracks = o.out.tracks  # type: ignore[union-attr]
            if track < len(tracks):
                tracks[track].producer.request_keyframe(time.monotonic())

    def _nack(self, rid: int, track: int, seqs: list[int]) -> None:
        for o in self._outs_of(rid):
            relay_out = o.out
            assert relay_out is not None
            if track < len(relay_out.tracks):
                producer = relay_out.tracks[track].producer
                for seq in seqs:
                    packet = producer.lookup(seq)
                    if packet is not None and relay_out.sender.send(track, packet):
                        self.retransmitted += 1

    def _end(self, link: Link, reason: str) -> None:
        source = self.pulled.get(link.stream_id)
        if source is not None and source.link is link:  # the origin's stream ended
            try:
                end = EndReason(reason)
            except ValueError:
                end = EndReason.ORIGIN_LOST
            self._end_pulled(source, end, f"origin said {reason}")
            return
        out = self.outs.get((link.stream_id, link.peer))
        if out is not None and out.link is link:  # the edge needs it no more
            self._close_out(out, "")

    def _end_pulled(self, source: PulledSource, reason: EndReason, why: str) -> None:
        if source.ended:
            return
        tell = why in ("unused", "node stopping")  # otherwise the origin ended it, or is silent
        copy = source.copy
        if copy is not None and self.workers is not None:
            self.workers.notify(copy.worker, "cluster_in_stop", id=copy.id, reason=why if tell else "")
        elif self.relay is not None:
            self.relay.unpull(source.rid, why if tell else "")
        self.pulled.pop(source.rid, None)
        log.info("cluster pull ended stream=%s origin=%s relay=%d why=%s", source.name, source.origin, source.rid, why)
        self.registry.unpublish(source, reason)  # its players hear `reason`
        source.ended = True
        if copy is not None and self.workers is not None:
            self.workers.forget(copy)  # its relays to the node's other workers stop with it
        else:
            source.router_.close()

    def _close_out(self, out: OutRelay, reason: str, *, tell_worker: bool = True) -> None:
        if self.outs.get((out.rid, out.dest)) is not out:
            return
        del self.outs[(out.rid, out.dest)]
        if out.out is not None:
            out.out.close()
        if out.worker is not None and self.workers is not None:
            if tell_worker:
                self.workers.notify(out.worker, "cluster_out_stop", rid=out.rid, dest=list(out.dest), reason=reason)
        elif self.relay is not None and out.link is not None:
            self.relay.withdraw(out.link, reason)
        log.info("cluster serving ended stream=%s to=%s relay=%d reason=%s", out.name, out.edge, out.rid,
                 reason or "edge gone")

    # --- what media workers report (cluster/worker.py) ----------------------------------------------------

    def _worker_event(self, worker: int, what: str, **args: Any) -> None:
        if what == "stats":
            self.worker_stats[worker] = args
        elif what == "in_ended":  # the origin ended the stream, or went silent
            for source in list(self.pulled.values()):
                if source.copy is not None and source.copy.id == args.get("id"):
                    reason = str(args.get("reason", ""))
                    try:
                        end = EndReason(reason)
                    except ValueError:
                        end = EndReason.ORIGIN_LOST
                    self._end_pulled(source, end, str(args.get("why") or f"origin said {reason}"))
        elif what == "out_ended":  # the edge is gone, or needs it no more: the worker closed it already
            out = self.outs.get((int(args["rid"]), (str(args["dest"][0]), int(args["dest"][1]))))
            if out is not None and out.worker == worker:
                self._close_out(out, "", tell_worker=False)

    # --- liveness, NACK retries, lingering -----------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            try:
                self._tick_once(time.monotonic())
            except Exception:
                log.exception("cluster tick failed")

    def _tick_once(self, now: float) -> None:
        timeout = self.settings.ttl
        keepalive = now - self._last_keepalive >= KEEPALIVE
        if keepalive:
            self._last_keepalive = now
        for source in list(self.pulled.values()):
            link = source.link
            if link is None and source.copy is None:
                continue
            if link is not None and now - (link.heard or source.started) > timeout:
                self._end_pulled(source, EndReason.ORIGIN_LOST, "origin silent")
                continue
            if self.registry.readers(source.name) or any(o.source is source for o in self.outs.values()):
                source.idle_since = None  # read here, or relayed onward (chained)
            elif source.idle_since is None:
                source.idle_since = now
            elif now - source.idle_since > LINGER:
                self._end_pulled(source, EndReason.PUBLISHER_STOPPED, "unused")
                continue
            if link is None:  # held in a worker: its liveness and NACKs are the worker's
                continue
            for track in source.tracks:
                if track.producer.missing:
                    track.producer.retry_nacks(now)
            if keepalive and self.relay is not None:
                self.relay.keepalive(link, UP)
        for out in list(self.outs.values()):
            if out.link is None:  # served by a worker, which keeps its liveness
                continue
            if now - (out.link.heard or out.created) > timeout:
                self._close_out(out, "")
                continue
            if self.relay is not None and out.out is not None:
                if keepalive:
                    self.relay.keepalive(out.link, DOWN)
                self._pass_sender_reports(out)

    def _pass_sender_reports(self, out: OutRelay) -> None:
        relay_out = out.out
        assert relay_out is not None and self.relay is not None and out.link is not None
        for index, track in enumerate(relay_out.tracks):
            p = track.producer
            if p.sr_arrival and p.sr_arrival != relay_out.reported_srs[index]:
                relay_out.reported_srs[index] = p.sr_arrival
                self.relay.sender_report(out.link, index, p.sr_ntp, p.sr_rtp)

    # --- statistics ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        relay = self.relay
        counters: dict[str, int] = {} if relay is None else {**asdict(relay.stats), "unsealed": relay.unsealed,
                                                            "auth_failed": relay.auth_failed}
        retransmitted = self.retransmitted
        synced: dict[str, bool] = {}
        for report in self.worker_stats.values():  # with media workers: their sockets' counters, summed
            for key, value in report.get("relay", {}).items():
                counters[key] = counters.get(key, 0) + value
            retransmitted += report.get("retransmitted", 0)
            synced.update({str(k): v for k, v in report.get("synced", {}).items()})

        def sender_reports(p: PulledSource) -> bool:
            if p.copy is not None:
                return synced.get(str(p.copy.id), False)
            return all(t.producer.sr_arrival for t in p.tracks)
        return {"node": self.node_id, "directory_up": self.directory_up,
                "workers": self.workers.count if self.workers is not None else 0,
                "pulled": [{"name": p.name, "origin": p.origin, "relay": p.rid,
                            "readers": len(self.registry.readers(p.name)), "sender_reports": sender_reports(p),
                            "worker": p.copy.worker if p.copy is not None else None}
                           for p in self.pulled.values()],
                "serving": [{"name": o.name, "edge": o.edge, "relay": o.rid,
                             "sending": o.out is not None or o.worker is not None, "worker": o.worker}
                            for o in self.outs.values()],
                "retransmitted": retransmitted, "relay": counters}


class _CopyListener:
    """A pulled copy's view hears its worker's events (workers/control.py's RemoteEndpoint)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self.source: PulledSource | None = None

    def on_connected(self) -> None:
        pass

    def on_first_media(self) -> None:
        pass

    def on_failed(self, reason: Any) -> None:  # its worker is lost: its players end too, the next one pulls again
        if self.source is not None:
            self.node._end_pulled(self.source, EndReason.ORIGIN_LOST, f"worker lost ({reason})")

    def on_video_size(self, width: int, height: int) -> None:
        source = self.source
        if source is not None and not source.ended and (width, height) != (source.width, source.height):
            source.width, source.height = width, height
            self.node.registry.video_size(source, width, height)


def default_node_id(port: int) -> str:
    return f"{socket.gethostname()}:{port}"
