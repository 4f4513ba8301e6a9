"""Live fuzzing: mutated real SDK messages over many WebSocket sessions, and garbage or truncated datagrams to
the media port, while a healthy stream plays. Seeded: the same seed sends the same bytes.

The messages come from the capture fixtures (tests/fixtures/captures/*.json: every frame the official Web SDK
sent in real browsers, SDP offers included) and are mutated structurally (field deletions, type swaps, huge
strings, unicode, wrong message names, SDP line edits) or textually (truncation, byte flips).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "captures"

UNICODE = ["\u0000", "\ud800", "\udfff", "\u202e", "\u200b", "\ufeff", "é", "漢字", "🎥" * 3, "\U0010ffff",
           "a\u0301", "\\", "\"", "\r\n", "%s%n", "../../etc/passwd", "<script>", "' OR 1=1 --"]


def load_messages() -> list[dict[str, Any]]:
    """Every client→server frame of every capture, as {"message", "data"}."""
    out = []
    for path in sorted(CAPTURES.glob("*.json")):
        for frame in json.loads(path.read_text())["messages"]:
            if frame.get("dir") == "c2s" and "message" in frame:
                out.append({"message": frame["message"], "data": frame.get("data")})
    if not out:
        raise RuntimeError(f"no SDK messages in {CAPTURES}")
    return out


class Mutator:
    def __init__(self, seed: int, messages: list[dict[str, Any]], names: list[str],
                 huge: int = 200_000) -> None:
        self.rng = random.Random(seed)
        self.messages = messages
        self.names = names  # stream names worth hitting (the healthy one among them)
        self.huge = huge
        self.kinds: Counter[str] = Counter()
        self.with_sdp = [m for m in messages if "sdp" in json.dumps(m)[:20000] and isinstance(m.get("data"), list)
                         and m["data"] and isinstance(m["data"][0], dict) and "sdp" in m["data"][0]] or messages
        self.message_names = sorted({m["message"] for m in messages}) + [
            "getVersion", "setStreamProperties", "fail", "notifyStreamStatusEvent", "", "__proto__", "x" * 300]

    # --- value-level mutations --------------------------------------------------------------------

    def _random_value(self) -> Any:
        r = self.rng
        return r.choice([None, True, False, 0, -1, 2 ** 63, 2 ** 70, -(2 ** 64), 1.5e308, -0.0, "", "null",
                         [], {}, [[[[[]]]]], {"a": {"b": {"c": None}}}, r.choice(UNICODE),
                         "x" * r.choice((1, 255, 4096)), r.randrange(-10 ** 6, 10 ** 6), [None] * 50])

    def _paths(self, obj: Any, path: tuple = ()) -> list[tuple]:
        out = [path]
        if isinstance(obj, dict):
            for k, v in obj.items():
                out += self._paths(v, path + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                out += self._paths(v, path + (i,))
        return out

    @staticmethod
    def _get(obj: Any, path: tuple) -> Any:
        for p in path:
            obj = obj[p]
        return obj

    def _set(self, root: Any, path: tuple, value: Any) -> Any:
        if not path:
            return value
        self._get(root, path[:-1])[path[-1]] = value
        return root

    def mutate_sdp(self, sdp: str) -> str:
        r = self.rng
        lines = sdp.split("\r\n")
        op = r.randrange(7)
        if op == 0 and lines:
            del lines[r.randrange(len(lines))]
        elif op == 1 and lines:
            i = r.randrange(len(lines))
            lines[i:i] = [lines[i]] * r.choice((2, 50))
        elif op == 2:
            return sdp[: r.randrange(len(sdp) + 1)]
        elif op == 3 and lines:
            i = r.randrange(len(lines))
            lines[i] = lines[i][:2] + r.choice(UNICODE) + lines[i][2:]
        elif op == 4:
            lines = [line.replace(" ", "  ") if r.random() < 0.3 else line for line in lines]
        elif op == 5 and lines:
            i = r.randrange(len(lines))
            lines[i] = "".join(c if not c.isdigit() else str(r.randrange(10)) * r.choice((1, 12)) for c in lines[i])
        else:
            lines.insert(r.randrange(len(lines) + 1), "a=" + "x" * r.choice((100, 10_000)))
        return "\r\n".join(lines)

    def mutate(self) -> str:
        """One mutated SDK message, serialized (not always valid JSON)."""
        r = self.rng
        op = r.choice(["delete", "delete", "type", "type", "huge", "unicode", "sdp", "sdp", "name", "truncate",
                       "flip", "data", "deep", "valid"])
        self.kinds[op] += 1
        message = copy.deepcopy(r.choice(self.with_sdp if op == "sdp" else self.messages))
        # point stream names at live names sometimes (the healthy stream must not be touched by others)
        for path in self._paths(message):
            if path and path[-1] == "name" and isinstance(self._get(message, path), str) and r.random() < 0.5:
                self._set(message, path, r.choice(self.names))
        paths = self._paths(message)[1:]
        if op == "delete" and paths:
            path = r.choice(paths)
            parent = self._get(message, path[:-1])
            if isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent.pop(path[-1])
        elif op == "type" and paths:
            message = self._set(message, r.choice(paths), self._random_value())
        elif op == "huge" and paths:
            message = self._set(message, r.choice(paths), r.choice("aé\u0000🎥") * r.randrange(1000, self.huge))
        elif op == "unicode" and paths:
            strings = [p for p in paths if isinstance(self._get(message, p), str)] or paths
            message = self._set(message, r.choice(strings), "".join(r.choice(UNICODE) for _ in range(r.randrange(1, 9))))
        elif op == "sdp":
            sdps = [p for p in paths if p and p[-1] == "sdp" and isinstance(self._get(message, p), str)]
            if sdps:
                path = r.choice(sdps)
                message = self._set(message, path, self.mutate_sdp(self._get(message, path)))
            else:
                self.kinds["sdp-none"] += 1
        elif op == "name":
            message["message"] = r.choice(self.message_names)
        elif op == "data":
            message["data"] = r.choice([None, {}, "x", [], [None], [1, 2, 3], message["data"] * 3 if
                                        isinstance(message["data"], list) else 0])
        elif op == "deep":
            deep: Any = 0
            for _ in range(r.choice((50, 500, 5000))):
                deep = [deep]
            message = self._set(message, r.choice(paths) if paths else ("data",), deep)
        try:
            text = json.dumps(message, ensure_ascii=r.random() < 0.5)
        except (ValueError, RecursionError):  # nesting too deep for json.dumps: written by hand
            depth = r.choice((1000, 5000, 50_000))
            text = '{"message": "publishStream", "data": ' + "[" * depth + "]" * depth + "}"
        if op == "truncate":
            text = text[: r.randrange(len(text) + 1)]
        elif op == "flip" and text:
            b = bytearray(text.encode("utf-8", "surrogatepass"))
            for _ in range(r.randrange(1, 6)):
                b[r.randrange(len(b))] = r.randrange(256)
            text = b.decode("utf-8", "replace")
        return text


class WsFuzzer:
    """Mutated messages over many WebSocket sessions, `concurrency` at a time."""

    def __init__(self, url: str, mutator: Mutator, connection: dict[str, Any]) -> None:
        self.url = url
        self.mutator = mutator
        self.connection = connection
        self.counts: Counter[str] = Counter()

    async def run(self, mutations: int, concurrency: int = 6, per_session: tuple[int, int] = (1, 12)) -> Counter:
        rng = random.Random(self.mutator.rng.random())
        plans: list[int] = []
        left = mutations
        while left > 0:
            n = min(left, rng.randint(*per_session))
            plans.append(n)
            left -= n
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in plans:
            queue.put_nowait(n)
        async with aiohttp.ClientSession() as http:
            async def worker() -> None:
                while not queue.empty():
                    n = queue.get_nowait()
                    sent = await self.session(http, n, rng)
                    if sent < n:  # the server closed this one: the rest go over a new session
                        queue.put_nowait(n - sent)
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return self.counts

    async def session(self, http: aiohttp.ClientSession, n: int, rng: random.Random) -> int:
        """Sends up to n mutations over one new session; returns how many went before the server closed it."""
        self.counts["sessions"] += 1
        sent = 0
        try:
            async with http.ws_connect(self.url, heartbeat=None, max_msg_size=0) as ws:
                if rng.random() < 0.8:  # most sessions are established first, so the mutations go deep
                    await ws.send_str(json.dumps({"message": "connection", "data": [self.connection]}))
                for _ in range(n):
                    if ws.closed:
                        break
                    text = self.mutator.mutate()
                    if rng.random() < 0.1:
                        await ws.send_bytes(text.encode("utf-8", "surrogatepass"))
                    else:
                        try:
                            await ws.send_str(text)
                        except UnicodeEncodeError:  # a lone surrogate: the raw bytes, as a binary frame
                            await ws.send_bytes(text.encode("utf-8", "surrogatepass"))
                            self.counts["lone surrogates (binary)"] += 1
                    self.counts["mutations"] += 1
                    sent += 1
                    await self._drain(ws, 0.005)
                await self._drain(ws, 0.05)
                if ws.closed:
                    self.counts["closed_by_server"] += 1
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
            self.counts[f"client error {type(exc).__name__}"] += 1
        return max(sent, 1) if n else 0  # a session that could not send at all still uses one up

    async def _drain(self, ws: aiohttp.ClientWebSocketResponse, wait: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                frame = await asyncio.wait_for(ws.receive(), wait)
                if frame.type == aiohttp.WSMsgType.TEXT:
                    try:
                        name = json.loads(frame.data).get("message")
                    except (ValueError, AttributeError):
                        name = "?"
                    self.counts[f"answer {name}"] += 1
                    if name == "ping":
                        await ws.send_str('{"message":"pong","data":[null]}')
                elif frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                    aiohttp.WSMsgType.ERROR):
                    return


def garbage(rng: random.Random) -> bytes:
    first = rng.choice([0, 1, 2, 3, 20, 22, 23, 63, 64, 127, 128, 0x80, 0x90, 0xBF, 0xC0, 0xFF, rng.randrange(256)])
    return bytes([first]) + rng.randbytes(rng.choice((0, 1, 3, 11, 19, 40, 200, 1200, rng.randrange(1500))))


class UdpFuzzer:
    """Garbage and truncated copies of real packets to the media port: from fresh sockets (a new address each
    time) and, when given, from the healthy peers' own sockets (addresses the server has bound)."""

    def __init__(self, seed: int, media_addr: tuple[str, int], real: list[bytes],
                 peer_sockets: list[socket.socket] | None = None) -> None:
        self.rng = random.Random(seed)
        self.media_addr = media_addr
        self.real = real  # real datagrams seen on the port (copied; truncated before sending)
        self.peer_sockets = peer_sockets or []
        self.counts: Counter[str] = Counter()

    def _datagram(self) -> tuple[str, bytes]:
        r = self.rng
        if self.real and r.random() < 0.5:
            packet = r.choice(self.real)
            return "truncated", packet[: r.randrange(len(packet))] if len(packet) > 1 else b""
        return "garbage", garbage(r)

    async def run(self, seconds: float, rate: int = 1000) -> Counter:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        fresh: list[socket.socket] = []
        try:
            while loop.time() < end:
                for _ in range(max(1, rate // 100)):
                    kind, data = self._datagram()
                    if self.peer_sockets and self.rng.random() < 0.3:
                        sock, where = self.rng.choice(self.peer_sockets), "peer"
                    else:
                        if not fresh or self.rng.random() < 0.2:
                            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                            s.setblocking(False)
                            fresh.append(s)
                            if len(fresh) > 32:
                                fresh.pop(0).close()
                            self.counts["new addresses"] += 1
                        sock, where = fresh[-1], "new"
                    try:
                        sock.sendto(data, self.media_addr)
                        self.counts[f"{kind} from {where}"] += 1
                    except (BlockingIOError, OSError):
                        self.counts["send errors"] += 1
                await asyncio.sleep(0.01)
        finally:
            for s in fresh:
                s.close()
        return self.counts
