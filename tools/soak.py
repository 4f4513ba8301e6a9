"""Soak: one `python -m webcall` subprocess, ≥ 1,000 publish → play → stop cycles with real clients, mixed
with faults; the server's RSS, fds, threads and asyncio tasks sampled over the run, a slope fitted after
warm-up. `make soak` (ARGS="--cycles 1000 --workers 1,2"); writes artifacts/soak/soak-<time>.json.

Clients: the load generator's (webcall/bench): an aiortc publisher replaying a pre-encoded clip (no encoder
on the client side) and the light SRTP player (ICE/DTLS/SRTP by hand, no decoder, no aiortc). A cycle is done
when the player has received video from the publisher; then both stop with the SDK's messages.

Faults, one cycle in `--fault-every` gets one, in turn:
  drop     a publisher's WebSocket and UDP socket aborted without stopping or closing (TCP reset)
  noice    a player that signals playStream and never does ICE (the server's connect timeout fails it)
  reset    a TCP connection reset in the middle of the WebSocket upgrade request
  hook     a publish whose REST hook (publishStream) sleeps past --hook-timeout (the publish is denied)
  wsjunk   a WebSocket that sends garbage text and binary frames
  udpjunk  random datagrams to every media port from a fresh socket
The server runs with WEBCALL_DEBUG_OBJECTS=1: /debug/objects (live objects by type) is read after warm-up and
at the end, and the types that grew the most are in the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from webcall_bench.player import BenchPlayer, ClientIdentity, build_play_offer  # noqa: E402
from webcall_bench.publisher import (BenchPublisher, Window, encode_audio_clip, encode_video_clip,  # noqa: E402
                                     use_loopback_candidates)
from webcall_bench.signalling import (SignallingError, WcsConnection, new_media_session_id,  # noqa: E402
                                      play_request)

FAULTS = ("drop", "noice", "reset", "hook", "wsjunk", "udpjunk")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc ------------------------------------------------------------------------------------------

def proc_sample(pid: int) -> dict[str, int]:
    out = {"rss_kb": 0, "threads": 0, "fds": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kb"] = int(line.split()[1])
            elif line.startswith("Threads:"):
                out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return sorted(kids)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else None


# --- the hook backend ---------------------------------------------------------------------------------

class Backend:
    """Echoes every hook (allowed); publishStream of a name starting with "slow-" sleeps past the timeout."""

    def __init__(self, sleep: float) -> None:
        self.sleep = sleep
        self.calls = 0
        self.slow = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = json.loads(await request.read() or b"{}")
        if request.match_info["method"] == "publishStream" and str(body.get("name", "")).startswith("slow-"):
            self.slow += 1
            await asyncio.sleep(self.sleep)
        return web.json_response(body)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{app}/{method}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


# --- the server ---------------------------------------------------------------------------------------

class Server:
    def __init__(self, workers: int, hook_url: str, hook_timeout: float, log_path: Path, trace: int = 0) -> None:
        self.trace = trace
        self.http_port = free_port(socket.SOCK_STREAM)
        self.rest_port = free_port(socket.SOCK_STREAM)
        self.media_port = free_port(socket.SOCK_DGRAM)
        self.workers = workers
        self.log_path = log_path
        self.args = [sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", str(self.http_port),
                     "--media-host", "127.0.0.1", "--media-port", str(self.media_port), "--media-tcp-port", "off", "--public-ip", "127.0.0.1",
                     "--rest-port", str(self.rest_port), "--tls-port", "-1", "--workers", str(workers),
                     "--hook-url", hook_url, "--hook-timeout", str(hook_timeout), "--connect-timeout", "3",
                     "--consent-timeout", "6", "--log-level", "warning"]
        self.proc: subprocess.Popen | None = None
        self.wrapper: list[str] = []  # e.g. ["heaptrack", "-o", "/tmp/ht"]: what runs the server (native leaks)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def media_ports(self) -> list[int]:
        return [self.media_port + i for i in range(self.workers)] if self.workers > 1 else [self.media_port]

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), WEBCALL_DEBUG_OBJECTS="1")
        if self.trace:
            env["PYTHONTRACEMALLOC"] = str(self.trace)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.wrapper + self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=ROOT, start_new_session=True)  # its own group: see stop()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError, aiohttp.ClientError, asyncio.TimeoutError):
                if (await self.get(http, "/health"))["status"] == "ok":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not answering; see {self.log_path}")
            await asyncio.sleep(0.2)

    async def get(self, http: aiohttp.ClientSession, path: str) -> Any:
        async with http.get(self.rest + path, timeout=aiohttp.ClientTimeout(total=20)) as r:
            return await r.json()

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            # the whole group: a wrapper (heaptrack) runs the server as its child
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


# --- one run ------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace, workers: int, clips: tuple[list, list], stamp: str) -> None:
        self.args = args
        self.workers = workers
        self.video_clip, self.audio_clip = clips
        self.stamp = stamp
        self.rng = random.Random(args.seed)
        self.window = Window()
        self.identity = ClientIdentity()
        self.backend = Backend(sleep=args.hook_timeout * 3)
        self.server: Server | None = None
        self.samples: list[dict[str, Any]] = []
        self.counts = {"cycles_ok": 0, "cycles_failed": 0, **{f: 0 for f in FAULTS}}
        self.errors: dict[str, int] = {}
        self.background: set[asyncio.Task] = set()
        self.done = 0
        self.fit_from = 0

    def _error(self, what: str, exc: BaseException) -> None:
        key = f"{what}: {type(exc).__name__}: {str(exc)[:80]}"
        self.errors[key] = self.errors.get(key, 0) + 1

    async def run(self) -> dict[str, Any]:
        args = self.args
        await self.backend.start()
        log_path = ROOT / "artifacts" / "soak" / f"soak-{self.stamp}-w{self.workers}.server.log"
        hook_url = "" if args.no_hooks else f"http://127.0.0.1:{self.backend.port}/soak"
        self.server = Server(self.workers, hook_url, args.hook_timeout, log_path,
                             args.tracemalloc)
        self.server.wrapper = args.server_wrapper.split() if args.server_wrapper else []
        connector = aiohttp.TCPConnector(limit=0)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector) as http:
            self.http = http
            await self.server.start(http)
            try:
                await self.sample(0)
                objects_before: dict[str, int] | None = None
                sites_before: list = []
                workers_before: dict = {}
                warmup = int(args.cycles * args.warmup)
                next_cycle = 0

                async def lane(stop: int) -> None:
                    nonlocal next_cycle
                    while next_cycle < stop:
                        i = next_cycle
                        next_cycle += 1
                        await self.cycle(i)
                        self.done += 1
                        if self.done % args.sample_every == 0:
                            await self.sample(self.done)

                # Batches of --quiet-every cycles; after each, everything ends (faults included) and a quiet sample
                # is taken with no session left: the slope is fitted on those, free of what is in flight.
                while next_cycle < args.cycles:
                    stop = min(args.cycles, next_cycle + args.quiet_every)
                    await asyncio.gather(*(lane(stop) for _ in range(args.lanes)))
                    await asyncio.gather(*self.background, return_exceptions=True)
                    await self.drain(http)
                    await self.sample(self.done, quiet=True)
                    print(f"  [workers={self.workers}] {self.done}/{args.cycles} cycles "
                          f"({time.monotonic() - started:.0f} s) quiet: rss={self.samples[-1]['rss_kb']} KB "
                          f"malloc={self.samples[-1].get('heap_kb')} KB", file=sys.stderr, flush=True)
                    if objects_before is None and self.done >= warmup and args.objects:
                        snap = await self.server.get(http, "/debug/objects?top=400")
                        objects_before, sites_before = snap["types"], snap.get("sites", [])
                        workers_before = snap.get("workers", {})
                        # the slope is fitted from the next quiet sample on: the snapshot itself allocates
                        self.fit_from = self.done + 1
                await asyncio.gather(*self.background, return_exceptions=True)
                end = await self.drain(http)
                await self.sample(self.done, settled=True)
                await self.server.get(http, "/debug/heap?trim=1")  # free memory back to the system, then RSS again
                pid = self.server.proc.pid
                end["rss_kb_after_trim"] = proc_sample(pid)["rss_kb"]
                if self.workers > 1:
                    end["worker_rss_kb_after_trim"] = [proc_sample(k)["rss_kb"] for k in children(pid)]
                snap = await self.server.get(http, "/debug/objects?top=400") if args.objects else {"types": {}}
                objects_after, sites_after = snap["types"], snap.get("sites", [])
                workers_after = snap.get("workers", {})
            finally:
                rc = self.server.stop()
                await self.backend.stop()
        result = self.result(started, warmup, end, objects_before or {}, objects_after, rc)
        result["worker_objects_grown"] = {
            index: grown_types(workers_before.get(index, {}).get("types", {}), after.get("types", {}))
            for index, after in workers_after.items()}
        if sites_after:
            kb_before = {x["site"]: x["kb"] for x in sites_before}
            grown = sorted(((x["kb"] - kb_before.get(x["site"], 0), x["site"]) for x in sites_after), reverse=True)
            result["tracemalloc_grown_kb"] = [{"site": site, "kb": kb} for kb, site in grown[:20] if kb > 0]
        return result

    async def drain(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Wait (≤ 20 s) for every session and stream to be gone; what is left is reported."""
        assert self.server is not None
        deadline = time.monotonic() + 20
        while True:
            health = await self.server.get(http, "/health")
            streams = await self.server.get(http, "/rest-api/stream/find_all")
            sessions = await self.server.get(http, "/rest-api/connection/find_all")
            if (health["sessions"] == 0 and not streams) or time.monotonic() > deadline:
                return {"health": health, "find_all_streams": len(streams), "connections": len(sessions)}
            await asyncio.sleep(0.5)

    async def sample(self, cycle: int, settled: bool = False, quiet: bool = False) -> None:
        assert self.server is not None and self.server.proc is not None
        pid = self.server.proc.pid
        health = await self.server.get(self.http, "/health")
        s: dict[str, Any] = {"cycle": cycle, "t": round(time.monotonic(), 2), **proc_sample(pid),
                             "tasks": health.get("tasks"), "sessions": health["sessions"],
                             "streams": health["streams"], "players": health["players"], "settled": settled,
                             "quiet": quiet}
        heap = await self.server.get(self.http, "/debug/heap")
        s["heap_kb"] = heap.get("in_use_kb")  # malloc's bytes in use: a leak grows it, fragmentation does not
        s["gc_stats"] = heap.get("gc_stats")
        if quiet and self.args.collect:  # and after a full collection: what is left then is held, not waiting for it
            s["rss_kb_before_gc"] = s["rss_kb"]
            heap = await self.server.get(self.http, "/debug/heap?gc=1")
            s["heap_kb_before_gc"], s["heap_kb"] = s["heap_kb"], heap.get("in_use_kb")
            s["gc_collected"] = heap.get("collected")
        if self.workers > 1:
            s["worker_procs"] = [{"pid": k, **proc_sample(k)} for k in children(pid)]
            for index, (w, h) in enumerate(zip(s["worker_procs"], heap.get("workers", {}).values())):
                w["heap_kb"] = h.get("in_use_kb")  # workers are numbered in start order, as their pids are
        self.samples.append(s)

    # --- cycles -------------------------------------------------------------------------------------

    async def cycle(self, i: int) -> None:
        fault = FAULTS[(i // self.args.fault_every) % len(FAULTS)] if i % self.args.fault_every == 0 and i else None
        if fault is not None:
            self.counts[fault] += 1
            if fault != "noice":
                self._background(self.fault(fault, i))
        name = f"soak-{i}"
        publisher = BenchPublisher(name, self.window, self.video_clip, self.audio_clip, codec="VP8", width=320,
                                   height=240, fps=15)
        player = BenchPlayer(i, name, publisher.log, self.identity, self.window, sample_every=1 << 30)
        try:
            await publisher.start(self.http, self.server.url, timeout=10)
            await publisher.wait_media(10)
            if fault == "noice":  # a second player of this cycle's stream, once it is published
                self._background(self.fault(fault, i))
            await player.start(self.http, self.server.url, timeout=10)
            deadline = time.monotonic() + 10
            while player.video_packets < 5:
                if time.monotonic() > deadline:
                    raise TimeoutError("player received no video")
                await asyncio.sleep(0.02)
            ok = True
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            self._error("cycle", exc)
            ok = False
        finally:
            await self.stop_player(player)
            await self.stop_publisher(publisher)
        self.counts["cycles_ok" if ok else "cycles_failed"] += 1

    def _background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def stop_player(self, player: BenchPlayer) -> None:
        with contextlib.suppress(Exception):
            if player.conn is not None and not player.conn.closed.is_set():
                await player.conn.send("stopStream", {"mediaSessionId": player.media_session_id,
                                                      "name": player.stream, "published": False})
        await player.stop()

    async def stop_publisher(self, publisher: BenchPublisher) -> None:
        with contextlib.suppress(Exception):
            if publisher.conn is not None and not publisher.conn.closed.is_set():
                await publisher.conn.send("unPublishStream", {"mediaSessionId": publisher.media_session_id,
                                                              "name": publisher.name, "published": True})
        await publisher.stop()

    # --- faults -------------------------------------------------------------------------------------

    async def fault(self, kind: str, i: int) -> None:
        try:
            await getattr(self, f"fault_{kind}")(i)
        except Exception as exc:  # noqa: BLE001
            self._error(f"fault {kind}", exc)

    async def fault_drop(self, i: int) -> None:
        """Publishing, then gone: the TCP connection reset, the UDP socket closed, no unpublish, no close."""
        name = f"drop-{i}"
        publisher = BenchPublisher(name, self.window, self.video_clip, self.audio_clip, codec="VP8", width=320,
                                   height=240, fps=15)
        try:
            await publisher.start(self.http, self.server.url, timeout=10)
            await publisher.wait_media(10)
            conn = publisher.conn
            transport = conn.ws._response.connection.transport if conn and conn.ws._response.connection else None
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
        finally:
            # aiortc's close sends nothing to the server but RTCP BYE; its sockets go, like a killed tab
            await publisher.stop()

    async def fault_noice(self, i: int) -> None:
        conn = await WcsConnection.open(self.http, self.server.url, 10)
        try:
            offer = build_play_offer("abcd" * 2, "p" * 24, self.identity.fingerprint, random.getrandbits(62))
            await conn.request_stream("playStream", play_request(new_media_session_id(), f"soak-{i}", offer), 10)
            await asyncio.sleep(4.5)  # past --connect-timeout: the server fails the stream
        finally:
            await conn.close()

    async def fault_reset(self, i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.http_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def fault_hook(self, i: int) -> None:
        name = f"slow-{i}"
        publisher = BenchPublisher(name, self.window, self.video_clip, self.audio_clip, codec="VP8", width=320,
                                   height=240, fps=15)
        try:
            await publisher.start(self.http, self.server.url, timeout=self.args.hook_timeout + 5)
            raise AssertionError("a publish whose hook timed out was allowed")
        except (TimeoutError, asyncio.TimeoutError, SignallingError) as exc:
            if publisher.failed is None:
                raise AssertionError("a timed-out hook gave no FAILED") from exc
        finally:
            await publisher.stop()

    async def fault_wsjunk(self, i: int) -> None:
        async with self.http.ws_connect(self.server.url) as ws:
            rng = random.Random(i)
            for text in ("{", "null", "[]", '{"message": 5}', '{"message":"publishStream","data":[{}]}',
                         "\x00" * 50, json.dumps({"message": "connection", "data": [[1] * 20]})):
                await ws.send_str(text)
            await ws.send_bytes(rng.randbytes(300))
            await asyncio.sleep(0.1)

    async def fault_udpjunk(self, i: int) -> None:
        rng = random.Random(i)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for port in self.server.media_ports():
                for _ in range(50):
                    first = rng.choice((0, 1, 20, 22, 23, 128, 0x90, 0xFF))
                    s.sendto(bytes([first]) + rng.randbytes(rng.randrange(0, 300)), ("127.0.0.1", port))

    # --- the report ---------------------------------------------------------------------------------

    def result(self, started: float, warmup: int, end: dict[str, Any], before: dict[str, int],
               after: dict[str, int], rc: int | None) -> dict[str, Any]:
        live = [s for s in self.samples if s.get("quiet") and s["cycle"] >= max(warmup, self.fit_from)]
        if len(live) < 3:  # too few quiet points: every sample after warm-up
            live = [s for s in self.samples if not s["settled"] and s["cycle"] >= max(warmup, self.fit_from)]
        figures: dict[str, Any] = {}
        for key in ("rss_kb", "heap_kb", "fds", "threads", "tasks"):
            points = [(s["cycle"], s[key]) for s in live if s.get(key) is not None]
            figures[key] = {"warm": live[0][key] if live else None, "end": self.samples[-1][key],
                            "max": max((y for _, y in points), default=None),
                            "slope_per_cycle": slope(points),
                            # levelling off: the second half's slope well under the whole run's
                            "slope_last_half": slope(points[len(points) // 2:])}
        workers = []
        if self.workers > 1:
            pids = sorted({w["pid"] for s in live for w in s.get("worker_procs", [])})
            for pid in pids:
                series = [(s["cycle"], w) for s in live for w in s.get("worker_procs", []) if w["pid"] == pid]
                workers.append({"pid": pid, "samples": len(series),
                                "rss_kb_warm": series[0][1]["rss_kb"] if series else None,
                                "rss_kb_end": series[-1][1]["rss_kb"] if series else None,
                                "rss_slope_kb_per_cycle": slope([(c, w["rss_kb"]) for c, w in series]),
                                "rss_slope_last_half": slope([(c, w["rss_kb"]) for c, w in series[len(series) // 2:]]),
                                "heap_kb_warm": series[0][1].get("heap_kb") if series else None,
                                "heap_kb_end": series[-1][1].get("heap_kb") if series else None,
                                "heap_slope_kb_per_cycle": slope([(c, w["heap_kb"]) for c, w in series
                                                                  if w.get("heap_kb") is not None]),
                                "fds_warm": series[0][1]["fds"] if series else None,
                                "fds_end": series[-1][1]["fds"] if series else None,
                                "fds_slope_per_cycle": slope([(c, w["fds"]) for c, w in series])})
        return {
            "workers": self.workers, "cycles": self.done, "warmup_cycles": warmup, "fit_from_cycle": live[0]["cycle"]
            if live else None, "lanes": self.args.lanes,
            "seconds": round(time.monotonic() - started, 1), "server_exit": rc,
            "counts": self.counts, "errors": self.errors, "end": end, "figures": figures,
            "worker_processes": workers,
            "objects_grown": grown_types(before, after),
            "samples": self.samples,
        }


def grown_types(before: dict[str, int], after: dict[str, int], top: int = 15) -> list[dict[str, Any]]:
    grew = sorted(((after.get(k, 0) - before.get(k, 0), k) for k in set(before) | set(after)), reverse=True)
    return [{"type": k, "delta": d, "end": after.get(k, 0)} for d, k in grew[:top] if d > 0]


def table(runs: list[dict[str, Any]]) -> str:
    lines = [f"{'workers':>7} {'cycles':>6} {'ok':>5} {'fail':>4} {'secs':>6} | {'RSS warm→end KB':>17} "
             f"{'KB/cycle':>8} {'2nd half':>8} | {'fds':>9} {'fd/cyc':>7} | {'thr':>7} | {'tasks':>9} {'t/cyc':>7} | left"]
    for r in runs:
        f = r["figures"]

        def s(v: float | None, d: int = 3) -> str:
            return "-" if v is None else f"{v:.{d}f}"
        lines.append(
            f"{r['workers']:>7} {r['cycles']:>6} {r['counts']['cycles_ok']:>5} {r['counts']['cycles_failed']:>4} "
            f"{r['seconds']:>6.0f} | {str(f['rss_kb']['warm']) + '→' + str(f['rss_kb']['end']):>17} "
            f"{s(f['rss_kb']['slope_per_cycle'], 2):>8} {s(f['rss_kb']['slope_last_half'], 2):>8} | {str(f['fds']['warm']) + '→' + str(f['fds']['end']):>9} "
            f"{s(f['fds']['slope_per_cycle'], 4):>7} | {str(f['threads']['warm']) + '→' + str(f['threads']['end']):>7} | "
            f"{str(f['tasks']['warm']) + '→' + str(f['tasks']['end']):>9} {s(f['tasks']['slope_per_cycle'], 4):>7} | "
            f"sessions={r['end']['health']['sessions']} streams={r['end']['find_all_streams']}")
        h = f["heap_kb"]
        lines.append(f"{'':>7} control process: malloc in use {h['warm']}→{h['end']} KB ({s(h['slope_per_cycle'], 2)} "
                     f"KB/cycle, 2nd half {s(h['slope_last_half'], 2)}); RSS after malloc_trim at the end "
                     f"{r['end'].get('rss_kb_after_trim')} KB; full collections in the server: "
                     f"{(r['samples'][-1].get('gc_stats') or [{}, {}, {}])[2].get('collections')}")
        for w in r["worker_processes"]:
            lines.append(f"{'':>7} worker pid {w['pid']}: malloc in use {w.get('heap_kb_warm')}→{w.get('heap_kb_end')} KB "
                         f"({s(w.get('heap_slope_kb_per_cycle'), 2)} KB/cycle)")
            lines.append(f"{'':>7} worker pid {w['pid']}: RSS {w['rss_kb_warm']}→{w['rss_kb_end']} KB "
                         f"({s(w['rss_slope_kb_per_cycle'], 2)} KB/cycle, 2nd half "
                         f"{s(w['rss_slope_last_half'], 2)}), fds {w['fds_warm']}→{w['fds_end']} "
                         f"({s(w['fds_slope_per_cycle'], 4)}/cycle)")
        faults = ", ".join(f"{k}={r['counts'][k]}" for k in FAULTS)
        lines.append(f"{'':>7} faults: {faults}")
        if r["errors"]:
            lines.append(f"{'':>7} errors: {json.dumps(r['errors'])[:400]}")
        for site in r.get("tracemalloc_grown_kb", [])[:8]:
            lines.append(f"{'':>7} grew {site['kb']:>6} KB at {site['site']}")
        if r["objects_grown"]:
            lines.append(f"{'':>7} objects grown after warm-up: "
                         + ", ".join(f"{o['type']}+{o['delta']}" for o in r["objects_grown"][:8]))
        for index, grown in r.get("worker_objects_grown", {}).items():
            lines.append(f"{'':>7} worker {index} objects grown after warm-up: "
                         + (", ".join(f"{o['type']}+{o['delta']}" for o in grown[:8]) or "none"))
    return "\n".join(lines)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--workers", default="1,2", help="comma-separated: one run per value")
    ap.add_argument("--lanes", type=int, default=3, help="cycles run at once")
    ap.add_argument("--fault-every", type=int, default=5, help="one cycle in N starts a fault")
    ap.add_argument("--sample-every", type=int, default=20)
    ap.add_argument("--quiet-every", type=int, default=50,
                    help="cycles between quiet points (all cycles and faults ended, no session left): the slopes "
                         "are fitted on these")
    ap.add_argument("--warmup", type=float, default=0.2, help="fraction of cycles before the slope is fitted")
    ap.add_argument("--hook-timeout", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                    help="run the server with PYTHONTRACEMALLOC=FRAMES and report the allocation sites that grew")
    ap.add_argument("--collect", action="store_true",
                    help="a full garbage collection in the server at every quiet point (then malloc in use is what is "
                         "really held; without it, what the server's own collector leaves)")
    ap.add_argument("--objects", action="store_true",
                    help="an object census after warm-up and at the end, diffed by type (leak hunting; it runs a full "
                         "collection in the server, which changes what the slopes measure)")
    ap.add_argument("--no-hooks", action="store_true", help="no hook backend (the hook fault then publishes freely)")
    ap.add_argument("--server-wrapper", default="",
                    help='a command the server runs under, e.g. "heaptrack -o /tmp/soak" (its pid is then the '
                         "wrapper's: RSS figures are the wrapper's process, use its own report)")
    ap.add_argument("--max-slope", type=float, default=None,
                    help="exit 1 if the control process's RSS slope (KB/cycle) is above this")
    args = ap.parse_args(argv)
    use_loopback_candidates()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    loop = asyncio.get_running_loop()
    video = await loop.run_in_executor(None, encode_video_clip, "VP8", 320, 240, 15, 300_000, 2.0)
    audio = await loop.run_in_executor(None, encode_audio_clip)
    runs = []
    for workers in [int(w) for w in args.workers.split(",")]:
        print(f"soak: workers={workers}, {args.cycles} cycles, {args.lanes} at once", file=sys.stderr, flush=True)
        runs.append(await Soak(args, workers, (video, audio), stamp).run())
    out = ROOT / "artifacts" / "soak" / f"soak-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"started": stamp, "args": vars(args), "runs": runs}, indent=1))
    print(table(runs))
    print(f"wrote {out.relative_to(ROOT)}")
    bad = any(r["end"]["health"]["sessions"] or r["end"]["find_all_streams"] for r in runs)
    if args.max_slope is not None:
        bad |= any((r["figures"]["rss_kb"]["slope_per_cycle"] or 0) > args.max_slope for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
