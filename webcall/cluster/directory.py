"""The cluster's directory in Redis: live nodes, who publishes each stream name, and every node's stream list.

Redis is the only shared state (no consensus of our own): every entry expires (`ttl`) unless its node
refreshes it, so a node that dies vanishes within `ttl` seconds and its names become free.

Keys (`prefix` = "webcall:"):
- `node:<id>`     JSON {id, server, ws, wss, relay: [host, port], load} — refreshed every ttl/3.
- `stream:<name>` "<node id>\\n{JSON}" — the claim on a name: set-if-absent on publish, refreshed (or set again
                   after a Redis restart) by its node with a script that never overwrites another node's claim.
- `streams:<id>`  JSON list of the node's stream objects (REST find/find_all, /streams answer for the cluster).
- channel `ctl:<id>` — requests to a node (pull, terminate) and their answers, as JSON (cluster/node.py).

Every call is bounded by `timeout`; a Redis that does not answer raises DirectoryUnavailable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("webcall.cluster")

T = TypeVar("T")

# KEYS[1] claim; ARGV: owner node id, value, ttl ms. Set it unless another node holds it (1 set, 0 refused).
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS[1] claim; ARGV[1] owner node id. Delete it if this node holds it.
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. '\\n' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class DirectoryUnavailable(Exception):
    """Redis did not answer (down, unreachable, or too slow)."""


class Directory:
    def __init__(self, url: str, node_id: str, ttl: float, prefix: str = "webcall:", timeout: float = 1.0) -> None:
        self.node_id = node_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self.prefix = prefix
        self.timeout = timeout
        self.redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                       decode_responses=True)
        self._refresh = self.redis.register_script(_REFRESH)
        self._release = self.redis.register_script(_RELEASE)
        self.errors = 0  # calls that failed (Redis unavailable)

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except (RedisError, OSError):
            pass

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(make(), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            raise DirectoryUnavailable(str(exc) or type(exc).__name__) from exc

    def _claim_value(self, info: dict[str, Any]) -> str:
        return f"{self.node_id}\n{json.dumps(info)}"

    # --- this node -----------------------------------------------------------------------------------

    async def register(self, node: dict[str, Any], claims: dict[str, dict[str, Any]], streams: list[dict]) -> list[str]:
        """Refresh this node, its claims and its stream list in one round trip. Returns the names another node
        holds now (claims lost while Redis was away)."""
        async def run() -> list[str]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.set(f"{self.prefix}node:{self.node_id}", json.dumps(node), px=self.ttl_ms)
            pipe.set(f"{self.prefix}streams:{self.node_id}", json.dumps(streams), px=self.ttl_ms)
            names = list(claims)
            for name in names:
                await self._refresh(keys=[f"{self.prefix}stream:{name}"],
                                    args=[self.node_id, self._claim_value(claims[name]), self.ttl_ms], client=pipe)
            results = await pipe.execute()
            return [name for name, ok in zip(names, results[2:]) if not ok]
        return await self._call(run)

    async def claim(self, name: str, info: dict[str, Any]) -> bool:
        """Set-if-absent: True if the name is now this node's (or already was)."""
        key = f"{self.prefix}stream:{name}"
        value = self._claim_value(info)

        async def run() -> bool:
            if await self.redis.set(key, value, nx=True, px=self.ttl_ms):
                return True
            return bool(await self._refresh(keys=[key], args=[self.node_id, value, self.ttl_ms]))
        return await self._call(run)

    async def release(self, name: str) -> None:
        await self._call(lambda: self._release(keys=[f"{self.prefix}stream:{name}"], args=[self.node_id]))

    async def unregister(self) -> None:
        await self._call(lambda: self.redis.delete(f"{self.prefix}node:{self.node_id}",
                                                   f"{self.prefix}streams:{self.node_id}"))

    # --- the cluster ---------------------------------------------------------------------------------

    async def owner(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """(node id, claim info) of the node publishing `name`, or None."""
        value = await self._call(lambda: self.redis.get(f"{self.prefix}stream:{name}"))
        if not value:
            return None
        node, _, info = value.partition("\n")
        return node, json.loads(info or "{}")

    async def node(self, node_id: str) -> dict[str, Any] | None:
        value = await self._call(lambda: self.redis.get(f"{self.prefix}node:{node_id}"))
        return json.loads(value) if value else None

    async def _all(self, kind: str) -> dict[str, Any]:
        """Every `<kind>:<id>` entry's JSON value, by id (ids may hold colons: host:port)."""
        pattern = f"{self.prefix}{kind}:"

        async def run() -> dict[str, Any]:
            keys = [k async for k in self.redis.scan_iter(match=pattern + "*", count=1000)]
            values = await self.redis.mget(keys) if keys else []
            return {k[len(pattern):]: json.loads(v) for k, v in zip(keys, values) if v}
        return await self._call(run)

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Every live node's entry, by id."""
        return await self._all("node")

    async def streams(self) -> dict[str, list[dict]]:
        """Every live node's stream list, by node id."""
        return await self._all("streams")

    # --- requests between nodes ----------------------------------------------------------------------

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}ctl:{node_id}"

    async def send(self, node_id: str, message: dict[str, Any]) -> int:
        """Publish a request or answer to a node; how many subscribers got it (0: that node is not listening)."""
        return await self._call(lambda: self.redis.publish(self.channel(node_id), json.dumps(message)))

    async def listen(self, on_message: Callable[[dict[str, Any]], None], on_up: Callable[[], None]) -> None:
        """Receive this node's channel forever, subscribing again whenever Redis comes back (`on_up` then)."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel(self.node_id))
                on_up()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        on_message(json.loads(message["data"]))
                    except Exception:  # one bad request must not end the listener
                        log.exception("cluster request failed")
            except (RedisError, OSError, TimeoutError) as exc:
                self.errors += 1
                log.debug("cluster channel lost: %s", exc)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(0.5)
