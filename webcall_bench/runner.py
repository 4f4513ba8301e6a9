"""The benchmark run: a server, publishers, players added step by step, and what each step costs.

Per step, over a measurement window W (after the new players got their first keyframe and settled):

* server CPU: user+sys of every server process (/proc/<pid>/stat) over W — the control process and each of
  its media workers (--workers N), together and one by one — per second, per player, per forwarded packet;
  players per core = players ÷ the server's CPU fraction; players per worker and relayed packets from the
  server's /metrics (its REST port);
* delivery: each player's RTP packets and bytes with a kernel receive time inside W, against the packets its
  publisher sent inside W; a step passes only if every player got ≥ `min_delivery` of them;
* latency: publisher send → player receive for every video packet (same host clock), p50/p99;
* time to first frame of the players that joined in this step: playStream sent → first keyframe complete;
* memory: the server's RSS growth per player; the load generator's own CPU, apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

from . import procstat
from .ceiling import compiled_cost_at, cost_at, fit_linear, stream_sizes
from .player import BenchPlayer, ClientIdentity, parse_answer
from .publisher import BenchPublisher, Window, encode_audio_clip, encode_video_clip, use_loopback_candidates
from .signalling import WcsConnection


@dataclass
class BenchConfig:
    url: str | None = None  # a running server's signalling URL; None = start one on 127.0.0.1
    server_pid: int | None = None  # its pid, for CPU figures (found by media port when local)
    steps: list[int] = field(default_factory=lambda: [10, 25, 50, 100, 150, 200])
    publishers: int = 1
    codec: str = "VP8"
    width: int = 640
    height: int = 480
    fps: float = 30.0
    bitrate: int = 600_000  # video, bit/s
    pacing_factor: float = 2.5  # publishers pace video at this × bitrate, as Chrome does; 0 = aiortc's bursts
    audio_bitrate: int = 32_000
    clip_seconds: float = 10.0  # the encoded clip replayed by publishers: one keyframe per clip (and per PLI)
    window: float = 10.0  # seconds measured per step
    settle: float = 1.5  # seconds between the last first-frame of a step and its window
    join_concurrency: int = 25
    probe_joins: int = 10  # after each window, this many players join one at a time (TTFF of a lone joiner)
    join_timeout: float = 20.0
    first_frame_timeout: float = 10.0
    min_delivery: float = 0.99
    max_latency_ms: float = 50.0  # p99 above this breaks the step
    stop_at_knee: bool = True
    sample_every: int = 100  # decrypt one packet in this many to check integrity
    ceiling: bool = True
    ceiling_packets: int = 2000
    compiled_ceiling: bool = True  # the same per-player work in C (the fan-out core's loop), at every step's fan-out
    compiled_packets: int = 300  # publisher packets per fan-out, paced at the stream's rate (≈ 2.5 s each)
    pin: bool = True  # server on the last CPU, the load generator on the others (when it starts the server)
    profile: bool = False  # py-spy record the server during each window
    profile_native: bool = False  # ... with C frames (libsrtp, sendto) too
    server_args: list[str] = field(default_factory=list)
    workers: int = 1  # --workers of the server it starts (1: one process, no workers — the figures before workers)
    placement: str | None = None  # --placement of that server (fill|spread); None: the server's default
    rest_url: str | None = None  # the REST base URL of a running server (/metrics: players per worker, relays)
    baseline: str = ""  # a --workers 1 result JSON: µs per relayed packet from the CPU this run used on top
    output: str = ""  # JSON path; the PNG goes next to it
    plot: bool = True
    progress: bool = True


CONTROL_TARGET = 0.05  # of a core: with media workers the control process only signals (target at 400 players)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _ms(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(1000 * value, digits)


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Progress:
    """One status line rewritten in place (\\r) on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.text = ""
        self._width = 0

    def show(self, text: str) -> None:
        self.text = text
        if self.enabled:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0

    def line(self, text: str) -> None:
        """A permanent line (step summaries), printed above the status line."""
        if self.enabled:
            sys.stderr.write("\r" + " " * self._width + "\r")
            self._width = 0
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _free_udp_ports(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive free UDP ports on 127.0.0.1 (worker i takes --media-port + i)."""
    for _ in range(attempts):
        first = _free_port(socket.SOCK_DGRAM)
        held = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports")


class ServerProcess:
    """`python -m webcall` on 127.0.0.1 with ephemeral ports, its output in a log file."""

    def __init__(self, extra_args: list[str], log_path: Path, workers: int = 1, placement: str | None = None) -> None:
        self.http_port = _free_port(socket.SOCK_STREAM)
        self.rest_port = _free_port(socket.SOCK_STREAM)
        self.media_port = _free_udp_ports(workers)
        self.log_path = log_path
        self.workers = workers
        placement_args = ["--placement", placement] if placement else []
        self.args = [sys.executable, "-m", "webcall", "--host", "127.0.0.1", "--port", str(self.http_port),
                     "--media-host", "127.0.0.1", "--media-port", str(self.media_port), "--media-tcp-port", "off", "--public-ip", "127.0.0.1",
                     "--log-level", "warning", "--workers", str(workers), *placement_args,
                     *_rest_args(self.rest_port), *NO_PLAYER_LIMIT, *extra_args]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    async def start(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = await WcsConnection.open(http, self.url, 2.0)
                await conn.close()
                return
            except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not answering after {timeout}s; see {self.log_path}") from None
                await asyncio.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# The bench looks for the knee of the server's CPU; the guardrail on players per stream (1000 by default) would
# otherwise end a ramp first, with players refused as "Too many players of this stream". A later
# --server-arg can still set one.
NO_PLAYER_LIMIT = ["--max-players-per-stream", "0"]


def _rest_args(port: int) -> list[str]:
    """REST (/metrics: players per worker, relayed packets) on a port picked here, no HTTPS (8443 by default)."""
    return ["--rest-host", "127.0.0.1", "--rest-port", str(port), "--tls-port", "-1"]


async def measure_compiled_ceiling(fanouts: list[int], packets: int, sizes: list[int], rate: float) -> dict:
    """The compiled ceiling (the fan-out core's loop in C) at these fan-outs, in a process of its own."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall_bench.ceiling", "--compiled", "--sizes", "--fanouts",
        ",".join(map(str, fanouts)), "--packets", str(packets), "--rate", f"{rate:.1f}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_all_cpus, env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))))
    out, err = await proc.communicate(json.dumps(sizes).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"compiled ceiling measurement failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out)


def cheaper_compiled(before: dict, after: dict) -> dict:
    """Of two compiled-ceiling measurements (before and after the steps), the cheaper one fan-out by fan-out.

    Whatever else the machine does only adds to the loop's cost, never takes from it, so the least disturbed run
    is the cheaper one. The mean let one disturbed run move the target: at fan-out 10, where a call is ≈ 40 µs,
    the run after the steps measured 4.3-5.4 µs per packet against 3.7-4.1 before, and once 22.9 (× C 0.66
    at 10 players where the cheaper run gives 2.19)."""
    chosen = dict(before, runs=[before, after])
    chosen["fanouts"] = {}
    for key, first in before["fanouts"].items():
        second = after["fanouts"].get(key)
        cheaper = (second if second and second["us_per_forwarded_packet"] < first["us_per_forwarded_packet"]
                   else first)
        chosen["fanouts"][key] = dict(cheaper)
        woken = [r["us_per_forwarded_packet_woken"] for r in (first, second) if r and "us_per_forwarded_packet_woken" in r]
        if woken:  # the same rule for the loop that waits for its packets, taken on its own
            chosen["fanouts"][key]["us_per_forwarded_packet_woken"] = min(woken)
    fit = fit_linear([(r["fanout"], r["us_per_publisher_packet"]) for r in chosen["fanouts"].values()])
    chosen["fit"] = {"fixed_us": round(fit[0], 2), "per_player_us": round(fit[1], 3)} if fit else None
    return chosen


def apply_compiled(steps: list[dict], compiled: dict, publishers: int) -> None:
    """×compiled-ceiling for every step: server µs per forwarded packet ÷ the compiled loop's at that fan-out."""
    for step in steps:
        cpu = step.get("server_cpu")
        if not cpu:
            continue
        fanout = step["players"] / max(publishers, 1)
        cost = compiled_cost_at(compiled, fanout)
        cpu["compiled_us_per_packet"] = round(cost, 3) if cost else None
        measured = compiled["fanouts"].get(str(round(fanout))) if fanout == round(fanout) else None
        if measured:  # the loop's user/kernel split at this very fan-out
            cpu["compiled_us_user_per_packet"] = measured["us_user_per_forwarded_packet"]
            cpu["compiled_us_sys_per_packet"] = measured["us_sys_per_forwarded_packet"]
            # The same loop waiting in recv for each packet, its wake-ups counted, as the server's receiving
            # thread pays them: reported beside × C, the targets stay on × C.
            woken = measured.get("us_per_forwarded_packet_woken")
            cpu["compiled_woken_us_per_packet"] = woken
            cpu["ratio_to_compiled_woken"] = (round(cpu["us_per_packet"] / woken, 2)
                                              if woken and cpu.get("us_per_packet") else None)
        cpu["ratio_to_compiled"] = (round(cpu["us_per_packet"] / cost, 2)
                                    if cost and cpu.get("us_per_packet") else None)
        # The fan-out calls alone (what the compiled loop does), the rest being the server's other work
        cpu["fanout_ratio_to_compiled"] = (round(cpu["fanout_cpu_us_per_packet"] / cost, 2)
                                           if cost and cpu.get("fanout_cpu_us_per_packet") else None)


def server_fit(steps: list[dict], publishers: int) -> dict | None:
    """The server's CPU per publisher packet over the steps as fixed + N × per-player (least squares)."""
    points = [(step["players"] / max(publishers, 1), step["server_cpu"]["us_per_publisher_packet"])
              for step in steps if (step.get("server_cpu") or {}).get("us_per_publisher_packet")]
    fit = fit_linear(points)
    return {"fixed_us": round(fit[0], 2), "per_player_us": round(fit[1], 3), "points": len(points)} if fit else None


async def measure_ceiling(fanout: int, packets: int) -> dict:
    """The minimal forwarding loop, in a process of its own (see ceiling.py)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webcall_bench.ceiling", "--fanout", str(fanout), "--packets", str(packets),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=_all_cpus,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))))
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"ceiling measurement failed: {err.decode(errors='replace')[-2000:]}")
    return json.loads(out)


def summarize_profile(raw_path: Path, top: int = 20) -> dict:
    """Self and inclusive sample counts per function from py-spy's raw (collapsed) output."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    try:
        lines = raw_path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            file = where.rsplit(":", 1)[0].rstrip(")")
            short = "/".join(Path(file).parts[-2:]) if file else ""
            frames.append(f"{name} ({short})" if short else name)
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        if frames[-1].split(" (")[0].endswith(("select", "poll")):
            continue  # waiting for the next event: not part of any busy path
        for f in set(frames):
            incl_counts[f] = incl_counts.get(f, 0) + n

    idle = sum(v for k, v in self_counts.items() if k.split(" (")[0].endswith(("select", "poll")))
    busy = max(total - idle, 1)

    def table(counts: dict[str, int]) -> list[dict]:
        return [{"function": k, "samples": v, "pct_of_busy": round(100 * v / busy, 1)}
                for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
                if not k.split(" (")[0].endswith(("select", "poll"))][:top]

    return {"samples": total, "idle_samples": idle, "self": table(self_counts), "inclusive": table(incl_counts)}


class Bench:
    def __init__(self, config: BenchConfig) -> None:
        self.cfg = config
        self.window = Window()
        self.progress = Progress(config.progress)
        self.publishers: list[BenchPublisher] = []
        self.players: list[BenchPlayer] = []
        self.probes: list[BenchPlayer] = []  # the lone joiners, stopped once measured
        self.server: ServerProcess | None = None
        self.server_pid: int | None = procstat.control_pid(config.server_pid) if config.server_pid else None
        self.rest_url: str | None = config.rest_url.rstrip("/") if config.rest_url else None
        self.result: dict = {}
        self._phase = "starting"
        self._stop_ticker = asyncio.Event()
        self.video_clip: list[tuple[bytes, bool]] = []
        self.audio_clip: list[bytes] = []
        self.output = output_path(config)

    # --- the run ------------------------------------------------------------------------------------

    async def run(self) -> dict:
        cfg = self.cfg
        steps = sorted(set(cfg.steps))
        self.result = {
            "version": 1,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {**procstat.machine(), "python": sys.version.split()[0]},
            "config": asdict(cfg),
            "ceiling": None,
            "compiled_ceiling": None,
            "fit": None,
            "server": {},
            "publishers": [],
            "steps": [],
            "knee": None,
        }
        if cfg.ceiling:
            self.progress.show("measuring the ceiling (minimal forwarding loop)...")
            fanout = max(1, min(200, steps[-1] // max(cfg.publishers, 1)))
            self.result["ceiling"] = await measure_ceiling(fanout, cfg.ceiling_packets)
            c = self.result["ceiling"]
            self.progress.line(f"ceiling (minimal Python loop): {c['us_per_output_packet']:.2f} µs per forwarded "
                               f"packet + {c['us_per_input_packet']:.2f} µs per publisher packet "
                               f"({c['us_per_forwarded_packet']:.2f} µs/packet at fan-out {c['fanout']})")
        self.progress.show(f"encoding {cfg.clip_seconds:.0f} s of {cfg.codec} {cfg.width}x{cfg.height} at "
                           f"{cfg.bitrate // 1000} kbps (replayed by the publishers)...")
        loop = asyncio.get_running_loop()
        self.video_clip = await loop.run_in_executor(None, encode_video_clip, cfg.codec, cfg.width, cfg.height,
                                                     cfg.fps, cfg.bitrate, cfg.clip_seconds)
        self.audio_clip = await loop.run_in_executor(None, encode_audio_clip, cfg.audio_bitrate)
        clip_bytes = sum(len(d) for d, _ in self.video_clip)
        self.result["clip"] = {"frames": len(self.video_clip), "keyframe_bytes": len(self.video_clip[0][0]),
                               "video_kbps": round(8 * clip_bytes / (len(self.video_clip) / cfg.fps) / 1000, 1),
                               "audio_kbps": round(8 * sum(map(len, self.audio_clip))
                                                   / (0.02 * len(self.audio_clip)) / 1000, 1)}
        compiled_args = None
        if cfg.compiled_ceiling:
            # The stream's own packet mix and rate (video frames split as aiortc does, Opus every 20 ms).
            sizes = stream_sizes([len(d) for d, _ in self.video_clip], [len(a) for a in self.audio_clip], cfg.fps,
                                 len(self.video_clip) / cfg.fps)
            rate = cfg.publishers * len(sizes) / (len(self.video_clip) / cfg.fps)
            fanouts = sorted({max(1, round(n / max(cfg.publishers, 1))) for n in steps})
            compiled_args = (fanouts, cfg.compiled_packets, sizes, rate)
            self.progress.show(f"measuring the compiled ceiling (the core's loop in C) at fan-outs {fanouts}...")
            try:
                self.result["compiled_ceiling"] = await measure_compiled_ceiling(*compiled_args)
            except RuntimeError as exc:
                self.progress.line(f"compiled ceiling unavailable: {exc}")
                compiled_args = None
            else:
                fit = self.result["compiled_ceiling"]["fit"]
                if fit:
                    self.progress.line(f"compiled ceiling: {fit['fixed_us']:.1f} µs per publisher packet + "
                                       f"{fit['per_player_us']:.2f} µs per player")
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            ticker = asyncio.create_task(self._tick(), name="bench-ticker")
            try:
                await self._run(http, steps)
            finally:
                self._phase = "stopping"
                await self._teardown()
                self._stop_ticker.set()
                await asyncio.gather(ticker, return_exceptions=True)
                self.progress.clear()
        if cfg.ceiling and self.result["ceiling"] and self.result["steps"]:
            # Again after the run: this figure moves with whatever else the machine does, so the ratios use
            # the mean of the two measurements.
            self.progress.show("measuring the ceiling again...")
            try:
                after = await measure_ceiling(self.result["ceiling"]["fanout"], cfg.ceiling_packets)
            except RuntimeError:
                after = None
            if after is not None:
                self._average_ceiling(after)
        if compiled_args and self.result["steps"]:
            self.progress.show("measuring the compiled ceiling again...")
            with contextlib.suppress(RuntimeError):
                after = await measure_compiled_ceiling(*compiled_args)
                self.result["compiled_ceiling"] = cheaper_compiled(self.result["compiled_ceiling"], after)
        if self.result["compiled_ceiling"]:
            apply_compiled(self.result["steps"], self.result["compiled_ceiling"], len(self.publishers) or cfg.publishers)
        self.result["fit"] = {
            "server": server_fit(self.result["steps"], len(self.publishers) or cfg.publishers),
            "compiled": (self.result["compiled_ceiling"] or {}).get("fit"),
        }
        self.result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return self.result

    def _average_ceiling(self, after: dict) -> None:
        before = self.result["ceiling"]
        mean = dict(before)
        for key, value in before.items():
            if key.startswith(("us_", "naive_us_")):
                mean[key] = round((value + after[key]) / 2, 3)
        mean["runs"] = [before, after]
        self.result["ceiling"] = mean
        for step in self.result["steps"]:
            cpu = step.get("server_cpu")
            if not cpu:
                continue
            cost = cost_at(mean, step["players"] / max(len(self.publishers), 1))
            cpu["ceiling_us_per_packet"] = round(cost, 2)
            cpu["ratio_to_ceiling"] = round(cpu["us_per_packet"] / cost, 2) if cpu["us_per_packet"] else None

    async def _run(self, http: aiohttp.ClientSession, steps: list[int]) -> None:
        cfg = self.cfg
        url = cfg.url
        if url is None:
            self.server = ServerProcess(cfg.server_args, self.output.with_suffix(".server.log"), cfg.workers,
                                        cfg.placement)
            self.progress.show("starting the server...")
            await self.server.start(http)
            url = self.server.url
            self.rest_url = self.server.rest_url
            self.server_pid = self.server.proc.pid if self.server.proc else None
            if self.server_pid and cfg.workers > 1:
                await _wait_for_workers(self.server_pid, cfg.workers)
            if cfg.pin and self.server_pid:
                self.result["pinned"] = _pin(self.server_pid, _worker_pids(self.server_pid))
                if self.result["pinned"]:
                    self.progress.line("pinned: " + self.result["pinned"]["text"])
        host = urlparse(url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            use_loopback_candidates()
        self.result["server"] = {"url": url, "started_by_bench": self.server is not None,
                                 "args": self.server.args[1:] if self.server else None, "rest_url": self.rest_url}

        self._phase = "publishing"
        self.progress.show(f"publishing {cfg.publishers} stream(s)...")
        tag = os.urandom(3).hex()
        for i in range(cfg.publishers):
            publisher = BenchPublisher(f"bench-{tag}-{i}", self.window, self.video_clip, self.audio_clip,
                                       codec=cfg.codec, width=cfg.width, height=cfg.height, fps=cfg.fps,
                                       pacing_bps=cfg.pacing_factor * cfg.bitrate)
            self.publishers.append(publisher)
            await publisher.start(http, url)
        await asyncio.gather(*(p.wait_media() for p in self.publishers))
        await asyncio.sleep(2.0)  # let the encoders reach their rate
        if self.server_pid is None and self.server is None:
            self.server_pid = _local_server_pid(self.publishers[0].answer_sdp or "")
        self.result["server"]["pid"] = self.server_pid
        if self.server_pid is not None:
            self.result["server"]["processes"] = [{"role": role, "pid": pid}
                                                  for role, pid in procstat.server_processes(self.server_pid)]
            self.result["server"]["rss_kb_before_players"] = _tree_rss_kb(self.server_pid)
            self.result["server"]["idle"] = await self._idle_window()

        identity = ClientIdentity()
        previous_ok: dict | None = None
        for index, target in enumerate(steps):
            if target <= len(self.players):
                continue
            step = await self._step(http, url, identity, index, len(steps), target)
            self.result["steps"].append(step)
            if _has_ratios(step) and not any(map(_has_ratios, self.result["steps"][:-1])):
                # the ceilings are measured again after the steps, and the final table's ratios use both
                self.progress.line("(× ceiling and × compiled in these lines use the ceilings measured before the "
                                   "steps; the table at the end uses the mean of that and a second measurement "
                                   "after them for × ceiling, the cheaper of the two at each fan-out for × C)")
            self.progress.line(_step_line(step))
            if step["ok"]:
                previous_ok = step
            elif cfg.stop_at_knee:
                break
            if any(p.failed for p in self.publishers):
                break  # nothing left to measure
        self.result["knee"] = _knee(self.result["steps"], previous_ok)
        self.result["publishers"] = [self._publisher_summary(p) for p in self.publishers]

    async def _step(self, http, url: str, identity: ClientIdentity, index: int, count: int, target: int) -> dict:
        cfg = self.cfg
        first_new = len(self.players)
        new = []
        for i in range(first_new, target):
            publisher = self.publishers[i % len(self.publishers)]
            new.append(BenchPlayer(i, publisher.name, publisher.log, identity, self.window,
                                   sample_every=cfg.sample_every))
        self.players.extend(new)
        self._phase = f"step {index + 1}/{count}: joining {len(new)} players"
        semaphore = asyncio.Semaphore(cfg.join_concurrency)

        async def join(player: BenchPlayer) -> None:
            async with semaphore:
                try:
                    await player.start(http, url, cfg.join_timeout)
                except Exception as exc:  # noqa: BLE001 - a failed join is a figure, not a crash
                    player.failed = player.failed or f"join: {type(exc).__name__}: {exc}"

        join_started = time.monotonic()
        await asyncio.gather(*(join(p) for p in new))
        join_seconds = time.monotonic() - join_started
        self._phase = f"step {index + 1}/{count}: waiting for first frames"
        deadline = time.monotonic() + cfg.first_frame_timeout
        while time.monotonic() < deadline and any(p.ttff is None and p.failed is None for p in new):
            await asyncio.sleep(0.05)
        # The load generator's own garbage collector must not pause the publisher mid-window (a pause makes it
        # send a burst, which the server then queues): collect now and move what exists out of the collector's
        # sight. Only this process — the server is measured as it is.
        gc.collect()
        gc.freeze()
        await asyncio.sleep(cfg.settle)

        # --- the window ---
        for p in self.players:
            p.reset_window()
        for pub in self.publishers:
            pub.log.reset_window()
        t0 = time.time() + 0.2
        t1 = t0 + cfg.window
        self.window.set(t0, t1)
        await asyncio.sleep(max(0.0, t0 - time.time()))
        metrics0 = await self._metrics(http)
        tree0 = _tree_cpu(self.server_pid) if self.server_pid else None
        threads0 = _tree_threads(self.server_pid) if self.server_pid else None
        own0 = time.process_time()
        machine0 = procstat.machine_ticks()
        wall0 = time.time()
        self._phase = f"step {index + 1}/{count}: measuring {target} players"
        profile_task = None
        profile_path = None
        if cfg.profile and self.server_pid:
            profile_path = self.output.with_suffix(f".profile-{target}.txt")
            profile_task = asyncio.create_task(_py_spy(self.server_pid, cfg.window, profile_path, cfg.profile_native,
                                                       subprocesses=len(tree0 or {}) > 1))
        await asyncio.sleep(max(0.0, t1 - time.time()))
        tree1 = _tree_cpu(self.server_pid) if self.server_pid else None
        threads1 = _tree_threads(self.server_pid) if self.server_pid else None
        own1 = time.process_time()
        machine1 = procstat.machine_ticks()
        wall = time.time() - wall0
        metrics1 = await self._metrics(http)
        await asyncio.sleep(0.3)  # packets stamped before t1 may still be queued in our sockets
        self.window.set(math.inf, math.inf)
        profile = None
        if profile_task is not None:
            error = await profile_task
            profile = summarize_profile(profile_path) if profile_path else {}
            profile["raw"] = str(profile_path)
            if error:
                profile["error"] = error
        machine = ((machine1[0] - machine0[0]) / procstat.CLK_TCK, (machine1[1] - machine0[1]) / procstat.CLK_TCK)
        processes, cpu0, cpu1 = _process_figures(tree0, tree1, wall, metrics1)
        step = self._step_result(target, new, join_seconds, wall, cpu0, cpu1, own1 - own0, machine, profile,
                                 fanout_cpu=_fanout_cpu(metrics0, metrics1))
        step["server_processes"] = processes
        if step["server_cpu"] is not None:
            step["server_cpu"]["threads"] = _thread_figures(threads0, threads1, step["server_cpu"]["seconds"], wall,
                                                            step["delivery"]["packets_received"])
        step["relay"] = _relay_figures(metrics0, metrics1, wall)
        self._check_control(step)
        self._phase = f"step {index + 1}/{count}: {cfg.probe_joins} lone joiners"
        step["ttff_ms"]["lone"] = await self._lone_joins(http, url, identity, cfg.probe_joins)
        return step

    async def _lone_joins(self, http, url: str, identity: ClientIdentity, count: int) -> dict:
        """TTFF of a viewer who joins this audience alone — the step's own figure is a crowd of new players
        joining together, which measures handshake queueing as much as the stream. Each probe joins, waits for
        its first frame, and leaves; the audience is the step's."""
        ttffs: list[float] = []
        probes: list[BenchPlayer] = []
        failed = 0
        publisher = self.publishers[0]
        for i in range(count):
            probe = BenchPlayer(-1 - i, publisher.name, publisher.log, identity, self.window,
                                sample_every=self.cfg.sample_every)
            try:
                await probe.start(http, url, self.cfg.join_timeout)
                deadline = time.monotonic() + self.cfg.first_frame_timeout
                while probe.ttff is None and probe.failed is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
            except Exception as exc:  # noqa: BLE001 - a failed probe is a figure
                probe.failed = probe.failed or f"join: {type(exc).__name__}: {exc}"
            finally:
                await probe.stop()
                self.probes.append(probe)
            if probe.ttff is None:
                failed += 1
            else:
                ttffs.append(probe.ttff)
                probes.append(probe)
            await asyncio.sleep(0.1)
        return {"p50": _ms(percentile(ttffs, 50), 1), "p95": _ms(percentile(ttffs, 95), 1),
                "max": _ms(max(ttffs), 1) if ttffs else None, "measured": len(ttffs), "missing": failed,
                "phases": _phases(probes)}

    def _step_result(self, target: int, new: list[BenchPlayer], join_seconds: float, wall: float,
                     cpu0: tuple[float, float] | None, cpu1: tuple[float, float] | None, own_cpu: float,
                     machine: tuple[float, float],
                     profile: dict | None, fanout_cpu: float | None = None) -> dict:
        cfg = self.cfg
        window = cfg.window
        players = self.players
        alive = [p for p in players if p.failed is None and p.dtls_at]
        failed = [p for p in players if p not in alive]
        per_player = []
        deliveries = []
        for p in players:
            expected = p.log.win_packets
            ratio = p.win_packets / expected if expected else 0.0
            if p in alive:
                deliveries.append(ratio)
            per_player.append({
                "index": p.index, "stream": p.stream, "packets": p.win_packets, "bytes": p.win_bytes,
                "expected_packets": expected, "loss_pct": round(100 * max(0.0, 1 - ratio), 3),
                "kbps": round(8 * p.win_bytes / window / 1000, 1), "ttff_ms": _ms(p.ttff, 1),
                "latency_p50_ms": _ms(percentile(p.latencies, 50), 3), "failed": p.failed,
                "srtp_profile": p.srtp_profile, "offsets_learned": p.seq_off is not None,
                "sampled": p.sampled, "sample_bad": p.sample_bad, "duplicates": p.duplicates,
                "other_packets": p.other_packets,
            })
        received = sum(p.win_packets for p in players)
        received_bytes = sum(p.win_bytes for p in players)
        sent_total = sum(p.log.win_packets for p in players)  # what the players should have got, together
        latencies = [x for p in players for x in p.latencies]
        lags = [x for p in players for x in p.lags]
        ttffs_new = [p.ttff for p in new if p.ttff is not None]
        ttffs_all = [p.ttff for p in players if p.ttff is not None]
        n = len(players)
        step: dict = {
            "players": n,
            "connected": len(alive),
            "failed": len(failed),
            "failures": sorted({p.failed for p in failed if p.failed})[:10],
            "join_seconds": round(join_seconds, 2),
            "window_s": round(wall, 3),
            "publisher_packets": sum(pub.log.win_packets for pub in self.publishers),
            "publisher_video_kbps": [round(8 * pub.log.win_video_bytes / window / 1000, 1) for pub in self.publishers],
            "publisher_audio_kbps": [round(8 * pub.log.win_audio_bytes / window / 1000, 1) for pub in self.publishers],
        }
        cpu = None
        if cpu0 is not None and cpu1 is not None:
            user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            seconds = user + system
            fraction = seconds / wall if wall > 0 else 0.0
            us_per_packet = 1e6 * seconds / received if received else None
            ceiling = self.result.get("ceiling")
            fanout = n / max(len(self.publishers), 1)
            ceiling_cost = cost_at(ceiling, fanout) if ceiling else None
            publisher_packets = step["publisher_packets"]
            cpu = {
                "seconds": round(seconds, 6),  # the CPU clock: exact (procstat.cpu_times)
                # user and kernel apart, per forwarded packet; and all of it per publisher packet (the fit's y)
                "us_user_per_packet": round(1e6 * user / received, 3) if received else None,
                "us_sys_per_packet": round(1e6 * system / received, 3) if received else None,
                "us_per_publisher_packet": round(1e6 * seconds / publisher_packets, 2) if publisher_packets else None,
                "fraction": round(fraction, 4),  # of one core: CPU seconds per second
                "sys_share": round(system / seconds, 3) if seconds > 0 else None,  # kernel: sendto, loopback
                "ms_per_s_per_player": round(1000 * fraction / n, 4) if n else None,
                "us_per_packet": round(us_per_packet, 2) if us_per_packet else None,
                "players_per_core": round(n / fraction, 1) if fraction > 0 else None,
                "ceiling_us_per_packet": round(ceiling_cost, 2) if ceiling_cost else None,
                "ratio_to_ceiling": round(us_per_packet / ceiling_cost, 2) if us_per_packet and ceiling_cost else None,
                "fanout_cpu_us_per_packet": fanout_cpu,
            }
        step["server_cpu"] = cpu
        if cpu and self.result.get("compiled_ceiling"):  # again with the mean of both measurements at the end
            apply_compiled([step], self.result["compiled_ceiling"], len(self.publishers) or cfg.publishers)
        step["server_cpu"] = cpu
        step["delivery"] = {
            "packets_received": received,
            "bytes_received": received_bytes,
            "packets_expected": sent_total,
            "packets_lost": max(0, sent_total - received),
            "loss_pct": round(100 * max(0.0, 1 - received / sent_total), 3) if sent_total else None,
            "min_ratio": round(min(deliveries), 4) if deliveries else None,
            "players_below_min": sum(1 for d in deliveries if d < cfg.min_delivery),
            "kbps_per_player": round(8 * received_bytes / window / 1000 / max(len(alive), 1), 1),
        }
        step["ttff_ms"] = {
            "p50": _ms(percentile(ttffs_new, 50), 1), "p95": _ms(percentile(ttffs_new, 95), 1),
            "max": _ms(max(ttffs_new), 1) if ttffs_new else None, "measured": len(ttffs_new),
            "missing": sum(1 for p in new if p.ttff is None),
            "all_p50": _ms(percentile(ttffs_all, 50), 1), "all_p95": _ms(percentile(ttffs_all, 95), 1),
            # Where the time goes, phase by phase (p50/p95 of the new players): playStream → setRemoteSDP,
            # → ICE connected, → DTLS done (SRTP keys), → the first keyframe complete.
            "phases": _phases(new),
        }
        step["latency_ms"] = {
            "p50": _ms(percentile(latencies, 50), 3), "p99": _ms(percentile(latencies, 99), 3),
            "max": _ms(max(latencies), 3) if latencies else None, "samples": len(latencies),
        }
        memory: dict = {}
        if self.server_pid is not None:
            with contextlib.suppress(OSError):
                rss = _tree_rss_kb(self.server_pid)
                base = self.result["server"].get("rss_kb_before_players") or rss
                memory = {"server_rss_mb": round(rss / 1024, 1),
                          "per_player_kb": round((rss - base) / n, 1) if n else None}
        step["memory"] = memory
        step["loadgen"] = {
            "cpu_fraction": round(own_cpu / wall, 4) if wall > 0 else None,
            "rss_mb": round(procstat.rss_kb(os.getpid()) / 1024, 1),
            "read_lag_ms_p50": _ms(percentile(lags, 50), 3),
            "read_lag_ms_p99": _ms(percentile(lags, 99), 3),
        }
        busy, steal = machine
        server_seconds = sum(cpu1) - sum(cpu0) if cpu0 is not None and cpu1 is not None else 0.0
        local_server = self.server is not None or self.server_pid is not None
        other = max(0.0, busy - own_cpu - (server_seconds if local_server else 0.0)) / wall if wall > 0 else 0.0
        step["machine"] = {
            "cpus": os.cpu_count(),
            "busy_cores": round(busy / wall, 3) if wall > 0 else None,
            "other_processes_cores": round(other, 3),  # neither the server nor the load generator
            "steal_cores": round(steal / wall, 3) if wall > 0 else None,  # taken by the hypervisor
        }
        framed = [p for p in alive if p.ttff is not None]
        step["integrity"] = {
            "sampled": sum(p.sampled for p in players), "ok": sum(p.sample_ok for p in players),
            "bad": sum(p.sample_bad for p in players),
            "unmatched": sum(p.sample_unmatched for p in players),
            "first_keyframes_intact": sum(1 for p in players if p.keyframe_intact),
            "offsets_learned": sum(1 for p in players if p.seq_off is not None),
            "players_with_first_frame": len(framed),
            "players_without_offsets": sorted(p.index for p in alive if p.seq_off is None),
            "duplicates": sum(p.duplicates for p in players),
            "other_packets": sum(p.other_packets for p in players),
        }
        publisher_problems = []
        for pub in self.publishers:
            expected = window * (self.cfg.fps * 0.5 + 25)  # far below a healthy publisher's packet rate
            if pub.failed or pub.log.win_packets < expected:
                publisher_problems.append(f"publisher {pub.name} "
                                          f"{'failed: ' + pub.failed if pub.failed else 'stalled'} "
                                          f"({pub.log.win_packets} packets in the window)")
        reasons = step_reasons(step, cfg.min_delivery, cfg.max_latency_ms, publisher_problems)
        warnings = []
        if step["machine"]["other_processes_cores"] > 0.25:
            warnings.append(f"other processes used {step['machine']['other_processes_cores']:.2f} cores of "
                            f"{os.cpu_count()}: figures are not clean")
        if (step["machine"]["steal_cores"] or 0) > 0.05:
            warnings.append(f"the hypervisor stole {step['machine']['steal_cores']:.2f} cores")
        lag = step["loadgen"]["read_lag_ms_p99"]
        if lag is not None and lag > 20:
            warnings.append(f"the load generator read its sockets late (p99 {lag:.0f} ms): it may be the bottleneck")
        step["ok"] = not reasons
        step["reasons"] = reasons
        step["warnings"] = warnings
        step["profile"] = profile
        step["per_player"] = per_player
        return step

    async def _idle_window(self) -> dict | None:
        """The server's CPU with its publishers but no player (no relay either): each process's fixed cost —
        event loops, timers, the workers' stats reports — which relaycost.py takes out of both runs."""
        seconds = max(2.0, self.cfg.window / 2)
        self._phase = f"measuring the server without players ({seconds:.0f} s)"
        tree0, wall0 = _tree_cpu(self.server_pid), time.monotonic()
        await asyncio.sleep(seconds)
        tree1, wall = _tree_cpu(self.server_pid), time.monotonic() - wall0
        processes, cpu0, cpu1 = _process_figures(tree0, tree1, wall, None)
        if cpu0 is None or cpu1 is None:
            return None
        return {"window_s": round(wall, 3), "cpu_seconds": round(sum(cpu1) - sum(cpu0), 3),
                "cpu_fraction": round((sum(cpu1) - sum(cpu0)) / wall, 4), "processes": processes}

    async def _metrics(self, http: aiohttp.ClientSession) -> dict | None:
        """The server's /metrics, parsed; None without a REST URL or when it does not answer."""
        if not self.rest_url:
            return None
        try:
            async with http.get(self.rest_url + "/metrics", timeout=aiohttp.ClientTimeout(total=3)) as r:
                if r.status != 200:
                    return None
                return parse_metrics(await r.text())
        except (OSError, aiohttp.ClientError, asyncio.TimeoutError):
            return None

    def _check_control(self, step: dict) -> None:
        """With media workers the control process only signals: its CPU is a figure of its own, with a target."""
        control = next((p for p in step["server_processes"] if p["role"] == "control"), None)
        if control is None or len(step["server_processes"]) < 2 or control["cpu_fraction"] is None:
            return
        step["control_cpu"] = {"fraction": control["cpu_fraction"], "target": CONTROL_TARGET,
                               "within_target": control["cpu_fraction"] < CONTROL_TARGET}
        if control["cpu_fraction"] >= CONTROL_TARGET:
            step["warnings"].append(f"the control process used {100 * control['cpu_fraction']:.1f}% of a core "
                                    f"(target: under {100 * CONTROL_TARGET:.0f}% — it is not on the packet path)")

    def _publisher_summary(self, p: BenchPublisher) -> dict:
        return {"name": p.name, "codec": p.codec, "size": [p.width, p.height], "fps": p.fps,
                "keyframes_on_request": p.video_track.forced_keyframes,
                "paced_packets": p.pacer.delayed if p.pacer else 0,
                "video_packets": p.log.video_packets, "audio_packets": p.log.audio_packets,
                "video_bytes": p.log.video_bytes, "audio_bytes": p.log.audio_bytes, "failed": p.failed}

    # --- background: consent, progress ---------------------------------------------------------------

    async def _tick(self) -> None:
        last_cpu = last_own = None
        last_t = time.monotonic()
        while not self._stop_ticker.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop_ticker.wait(), 0.5)
            now = time.monotonic()
            for player in self.players:
                player.keepalive(now)
            cpu = None
            if self.server_pid:
                tree = _tree_cpu(self.server_pid)
                cpu = sum(u + s for _, u, s in tree.values()) if tree else None
            own = time.process_time()
            dt = now - last_t
            parts = [self._phase]
            if self.players:
                connected = sum(1 for p in self.players if p.dtls_at and p.failed is None)
                framed = sum(1 for p in self.players if p.ttff is not None)
                failed = sum(1 for p in self.players if p.failed)
                parts.append(f"players {connected}/{len(self.players)} connected, {framed} with video, {failed} failed")
            if self.window.t0 != math.inf:
                left = self.window.t1 - time.time()
                if left > 0:
                    parts.append(f"window {self.cfg.window - left:4.1f}/{self.cfg.window:.0f}s")
            if cpu is not None and last_cpu is not None and dt > 0:
                parts.append(f"server CPU {100 * (cpu - last_cpu) / dt:3.0f}%")
            if last_own is not None and dt > 0:
                parts.append(f"load CPU {100 * (own - last_own) / dt:3.0f}%")
            self.progress.show(" | ".join(parts))
            last_cpu, last_own, last_t = cpu, own, now

    async def _teardown(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.players), return_exceptions=True)
        everyone = self.players + self.probes
        # Whole-run counts, for checking against the server's own counters (/metrics)
        self.result["totals"] = {
            "player_media_packets": sum(p.video_packets + p.audio_packets for p in everyone),
            "player_duplicates": sum(p.duplicates for p in everyone),
            "player_other_packets": sum(p.other_packets for p in everyone),
        }
        await asyncio.gather(*(p.stop() for p in self.publishers), return_exceptions=True)
        # Counted once they have stopped: a packet sent after the count would reach the server uncounted here
        # (seen: the server received 1024 where 1023 had been counted).
        self.result["totals"]["publisher_media_packets"] = sum(p.log.video_packets + p.log.audio_packets
                                                                for p in self.publishers)
        if self.result.get("pinned"):
            _all_cpus()
        if self.server is not None:
            code = self.server.stop()
            self.result.setdefault("server", {})["exit_code"] = code
            self.result["server"]["log"] = str(self.server.log_path)


async def _py_spy(pid: int, duration: float, path: Path, native: bool = False, subprocesses: bool = False) -> str | None:
    """py-spy record into `path` (raw collapsed stacks); returns an error message, or None. `subprocesses`: the
    media workers too (their stacks are prefixed with their process)."""
    exe = Path(sys.executable).with_name("py-spy")
    command = str(exe) if exe.exists() else "py-spy"
    # --nonblocking reads the server without stopping it; native (C) stacks need it stopped for each sample.
    mode = ["--native"] if native else ["--nonblocking"]
    try:
        proc = await asyncio.create_subprocess_exec(
            command, "record", "--pid", str(pid), "--duration", str(max(1, int(duration))), "--rate", "200",
            *mode, *(["--subprocesses"] if subprocesses else []), "--format", "raw", "--output", str(path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        return "py-spy not installed (make venv installs it)"
    _, err = await proc.communicate()
    if proc.returncode != 0:
        return f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
    return None


def step_reasons(step: dict, min_delivery: float, max_latency_ms: float, publisher_problems: list[str]) -> list[str]:
    """Why a step did not hold (empty: it held). A step holds only if every player connected, got its share,
    its first frame, and its samples prove the payload is the publisher's."""
    reasons = []
    if step["failed"]:
        reasons.append(f"{step['failed']} player(s) failed")
    delivery = step["delivery"]
    if delivery["players_below_min"]:
        reasons.append(f"{delivery['players_below_min']} player(s) under {100 * min_delivery:.0f}% delivery "
                       f"(worst {100 * (delivery['min_ratio'] or 0):.1f}%)")
    if step["ttff_ms"]["missing"]:
        reasons.append(f"{step['ttff_ms']['missing']} player(s) without a first frame")
    p99 = step["latency_ms"]["p99"]
    if p99 is None:
        reasons.append("no latency sample")
    elif p99 > max_latency_ms:
        reasons.append(f"latency p99 {p99:.1f} ms > {max_latency_ms:.0f} ms")
    integrity = step["integrity"]
    if integrity["bad"]:
        reasons.append(f"integrity: {integrity['bad']} sampled packet(s) failed to authenticate or match the "
                       f"publisher's ({integrity.get('unmatched', 0)} matched nothing it sent)")
    if step["connected"] and not integrity["sampled"]:
        reasons.append("integrity: no packet sampled")
    if integrity["first_keyframes_intact"] < integrity["players_with_first_frame"]:
        reasons.append(f"integrity: {integrity['players_with_first_frame'] - integrity['first_keyframes_intact']}"
                       f" first keyframe(s) not the publisher's")
    if integrity["players_without_offsets"]:
        reasons.append(f"{len(integrity['players_without_offsets'])} player(s) never learned their offsets "
                       f"(no latency, no payload check): {integrity['players_without_offsets'][:10]}")
    return reasons + publisher_problems


# --- the server's processes: the control process and its media workers --------------------------------------


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text: name -> [(labels, value)]. Enough for what the server writes (no escaped quotes in the
    labels the bench reads)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for part in rest.rstrip("}").split('",') if rest else []:
            key, _, val = part.partition("=")
            labels[key.strip()] = val.strip().strip('"')
        try:
            out.setdefault(name, []).append((labels, float(value)))
        except ValueError:
            continue
    return out


def _by_worker(metrics: dict | None, name: str, **match: str) -> dict[int, float]:
    """A per-worker family of parsed /metrics, as worker index -> value (the samples whose labels match)."""
    values: dict[int, float] = {}
    for labels, value in (metrics or {}).get(name, []):
        if "worker" in labels and all(labels.get(k) == v for k, v in match.items()):
            values[int(labels["worker"])] = value
    return values


def _worker_pids(control: int) -> dict[int, int]:
    """Worker index -> pid, from the control process's children."""
    return {int(role.split()[1]): pid for role, pid in procstat.server_processes(control) if role.startswith("worker ")}


async def _wait_for_workers(control: int, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_worker_pids(control)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server has {len(_worker_pids(control))} media worker(s), not {count}")
        await asyncio.sleep(0.1)


def _tree_cpu(control: int) -> dict[int, tuple[str, float, float]]:
    """pid -> (role, user, system) CPU seconds so far, of every server process (control, workers, other children)."""
    out = {}
    for role, pid in procstat.server_processes(control):
        with contextlib.suppress(OSError):
            out[pid] = (role, *procstat.cpu_times(pid))
    return out


def _tree_threads(control: int) -> dict[tuple[int, str, int], tuple[str, float]]:
    """(pid, process role, thread id) -> (thread kind, CPU seconds so far) for every live thread of every server
    process (procstat.threads: the event loop, ingest threads, fan-out helpers, other threads)."""
    out = {}
    for role, pid in procstat.server_processes(control):
        for tid, figures in procstat.threads(pid).items():
            out[pid, role, tid] = figures
    return out


def _thread_figures(threads0: dict | None, threads1: dict | None, seconds: float, wall: float,
                    packets: int) -> dict | None:
    """The server's CPU over the window (`seconds`: the processes alive at both ends) by thread kind: ms of CPU
    a second and µs per forwarded packet each, labelled by kind, or by process and kind when the server has
    several processes. Each thread counts from its reading at the start, or from 0 if it started later. What
    threads that ended during the window spent is in "rest": the process clocks count it, the threads' own
    counters are gone with them."""
    if threads0 is None or threads1 is None or wall <= 0:
        return None
    pids_at_start = {pid for pid, _, _ in threads0}
    several = len({pid for pid, _, _ in threads1}) > 1
    spent: dict[str, float] = {}
    for key, (kind, at_end) in threads1.items():
        pid, role, _ = key
        if pid not in pids_at_start:  # a process that came during the window: not in `seconds` either
            continue
        label = f"{role}: {kind}" if several else kind
        at_start = threads0[key][1] if key in threads0 else 0.0
        spent[label] = spent.get(label, 0.0) + max(0.0, at_end - at_start)
    spent["rest"] = max(0.0, seconds - sum(spent.values()))
    return {label: {"ms_per_s": round(1000 * cpu / wall, 2),
                    "us_per_packet": round(1e6 * cpu / packets, 3) if packets else None}
            for label, cpu in spent.items()}


def _tree_rss_kb(control: int) -> int:
    total = 0
    for _, pid in procstat.server_processes(control):
        with contextlib.suppress(OSError):
            total += procstat.rss_kb(pid)
    return total


def _process_figures(tree0: dict | None, tree1: dict | None, wall: float, metrics: dict | None
                     ) -> tuple[list[dict], tuple[float, float] | None, tuple[float, float] | None]:
    """Each server process's CPU over the window (those alive at both ends; a worker replaced mid-window is
    listed with `restarted`), players and publishers per worker from /metrics; and the (user, system) sums
    at both ends, for the server's totals."""
    if tree0 is None or tree1 is None:
        return [], None, None
    players = _by_worker(metrics, "webcall_worker_players")
    publishers = _by_worker(metrics, "webcall_worker_publishers")
    processes, u0 = [], [0.0, 0.0]
    u1 = [0.0, 0.0]
    for pid, (role, user1, sys1) in tree1.items():
        if pid not in tree0:
            processes.append({"role": role, "pid": pid, "restarted": True, "cpu_fraction": None})
            continue
        _, user0, sys0 = tree0[pid]
        u0[0] += user0
        u0[1] += sys0
        u1[0] += user1
        u1[1] += sys1
        seconds = (user1 - user0) + (sys1 - sys0)
        entry = {"role": role, "pid": pid, "cpu_seconds": round(seconds, 3),
                 "cpu_fraction": round(seconds / wall, 4) if wall > 0 else None,
                 "sys_share": round((sys1 - sys0) / seconds, 3) if seconds > 0 else None}
        if role.startswith("worker "):
            index = int(role.split()[1])
            entry["index"] = index
            entry["players"] = int(players[index]) if index in players else None
            entry["publishers"] = int(publishers[index]) if index in publishers else None
        processes.append(entry)
    gone = [role for pid, (role, _, _) in tree0.items() if pid not in tree1]
    processes += [{"role": role, "gone": True, "cpu_fraction": None} for role in gone]
    return processes, (u0[0], u0[1]), (u1[0], u1[1])


def _fanout_cpu(metrics0: dict | None, metrics1: dict | None) -> float | None:
    """µs of CPU per forwarded packet inside the server's fan-out calls over the window: its sampled fan-outs
    (/metrics: 1 in 64, the thread's CPU time, summed over the workers). Set against the compiled loop's cost,
    it tells the fan-out's own excess from everything else the server does; None without /metrics."""
    def total(metrics: dict | None, name: str) -> float:
        return sum(value for _, value in (metrics or {}).get(name, []))

    if not metrics0 or not metrics1 or "webcall_fanout_cpu_seconds_total" not in metrics1:
        return None
    players = total(metrics1, "webcall_fanout_players_total") - total(metrics0, "webcall_fanout_players_total")
    cpu = total(metrics1, "webcall_fanout_cpu_seconds_total") - total(metrics0, "webcall_fanout_cpu_seconds_total")
    return round(1e6 * cpu / players, 3) if players > 0 and cpu > 0 else None


def _relay_figures(metrics0: dict | None, metrics1: dict | None, wall: float) -> dict | None:
    """Packets the workers' relay sockets sent and received over the window (each worker reports its counters
    every --rate-interval/2, so the window's edges are that coarse); None without workers or /metrics."""
    if not metrics0 or not metrics1 or "webcall_relay_packets_total" not in metrics1:
        return None
    out: dict = {}
    for direction in ("sent", "received"):
        before = _by_worker(metrics0, "webcall_relay_packets_total", direction=direction)
        after = _by_worker(metrics1, "webcall_relay_packets_total", direction=direction)
        # A worker's counters restart with it: a drop means a new worker, counted from 0.
        per_worker = {i: int(v - before.get(i, 0) if v >= before.get(i, 0) else v) for i, v in after.items()}
        out[f"packets_{direction}"] = sum(per_worker.values())
        out[f"{direction}_by_worker"] = per_worker
    out["per_s"] = round(out["packets_sent"] / wall, 1) if wall > 0 else None
    return out


def _threads(pid: int) -> list[int]:
    """Every thread (task) of a process; just the pid if /proc cannot tell."""
    try:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return [pid]


def _set_affinity(pid: int, cpus: set[int] | range) -> None:
    """sched_setaffinity() applies to ONE thread: set it on each of them (threads made later inherit it)."""
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(tid, cpus)


def _all_cpus() -> None:
    """Undo `_pin` (in a child about to exec, or in this process once the server is gone)."""
    with contextlib.suppress(OSError):
        _set_affinity(os.getpid(), range(os.cpu_count() or 1))


def _pin(server_pid: int, workers: dict[int, int] | None = None) -> dict | None:
    """The server alone on the last CPUs, this process (players, publishers) on the others: the load generator
    then cannot take the server's cores, and a starved server is not mistaken for a slow one. Every thread of
    every process: the server's fan-out helper and executor threads, its media workers', and ours.

    Without workers the server gets the last CPU. With N workers it gets the last min(N, CPUs − 1) CPUs (the
    load generator keeps at least one): worker i alone on one of them (round robin when there are fewer CPUs
    than workers, which then share), the control process (signalling, off the packet path) on all of them. A
    worker the server starts later (a lost one replaced) inherits the control process's set."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    workers = dict(sorted((workers or {}).items()))
    k = max(1, min(len(workers), len(cpus) - 1))
    server_cpus, own_cpus = cpus[-k:], cpus[:-k]
    worker_cpus = {index: [server_cpus[n % k]] for n, index in enumerate(workers)}
    threads = 0
    try:
        _set_affinity(server_pid, set(server_cpus))
        threads += len(_threads(server_pid))
        for index, pid in workers.items():
            _set_affinity(pid, set(worker_cpus[index]))
            threads += len(_threads(pid))
        _set_affinity(os.getpid(), set(own_cpus))
    except OSError:
        return None

    def cpu_text(cs: list[int]) -> str:
        return ("CPU " if len(cs) == 1 else "CPUs ") + ",".join(map(str, cs))

    parts = [f"server (pid {server_pid}{', control: signalling only' if workers else ''}) {cpu_text(server_cpus)}"]
    parts += [f"worker {i} (pid {workers[i]}) {cpu_text(c)}" for i, c in worker_cpus.items()]
    parts.append(f"load generator {cpu_text(own_cpus)}")
    text = "; ".join(parts) + f" — every thread ({threads} in the server)"
    if len(workers) > k:
        text += f"; {len(workers)} workers share {k} CPU(s): this machine has {len(cpus)}"
    return {"server_cpus": server_cpus, "loadgen_cpus": own_cpus, "control_cpus": server_cpus,
            "worker_cpus": {str(i): c for i, c in worker_cpus.items()}, "workers_share_cpus": len(workers) > k,
            "server_threads": threads, "text": text}


def _local_server_pid(answer_sdp: str) -> int | None:
    """The pid behind the media port announced in an answer, if that port is on this host."""
    import ifaddr

    local = {"127.0.0.1", "::1"} | {
        ip.ip if isinstance(ip.ip, str) else ip.ip[0] for adapter in ifaddr.get_adapters() for ip in adapter.ips}
    for ip, port in parse_answer(answer_sdp).candidates:
        if ip in local:
            owner = procstat.udp_port_owner(port)
            return procstat.control_pid(owner) if owner is not None else None  # a worker's port: its parent
    return None


def _knee(steps: list[dict], last_ok: dict | None) -> dict:
    broken = next((s for s in steps if not s["ok"]), None)
    if broken is None:
        last = steps[-1] if steps else {}
        return {"reached": False, "capacity_players": None,
                "note": f"no step broke: the capacity is above {last.get('players', 0)} players",
                "estimated_players_per_core": (last.get("server_cpu") or {}).get("players_per_core")}
    return {"reached": True, "capacity_players": last_ok["players"] if last_ok else None,
            "broke_at": broken["players"], "reasons": broken["reasons"]}


def _phases(players: list[BenchPlayer]) -> dict:
    done = [p for p in players if p.ttff is not None and p.dtls_at]
    spans = {
        "answer": [p.answer_at - p.play_sent_at for p in done],
        "ice": [p.ice_at - p.answer_at for p in done],
        "dtls": [p.dtls_at - p.ice_at for p in done],
        "keyframe": [p.first_frame_at - p.dtls_at for p in done],
    }
    return {name: [_ms(percentile(values, 50), 1), _ms(percentile(values, 95), 1)] for name, values in spans.items()}


def _has_ratios(step: dict) -> bool:
    cpu = step.get("server_cpu") or {}
    return bool(cpu.get("ratio_to_ceiling") or cpu.get("ratio_to_compiled"))


def _step_line(step: dict) -> str:
    cpu = step.get("server_cpu") or {}
    lat = step["latency_ms"]
    ttff = step["ttff_ms"]
    ratio = cpu.get("ratio_to_ceiling")
    compiled = cpu.get("ratio_to_compiled")
    fanout = cpu.get("fanout_ratio_to_compiled")
    return (f"{step['players']:5d} players: server CPU {100 * (cpu.get('fraction') or 0):5.1f}% "
            f"{cpu.get('us_per_packet') or 0:6.1f} µs/pkt" + (f" (x{ratio:.2f} ceiling)" if ratio else "")
            + (f" (x{compiled:.2f} compiled" + (f", its fan-out calls x{fanout:.2f}" if fanout else "")
               + (f"; x{cpu['ratio_to_compiled_woken']:.2f} the loop woken per packet"
                  if cpu.get("ratio_to_compiled_woken") else "") + ")"
               if compiled else "")
            + _processes_text(step) + _threads_text(step) + " | "
            f"loss {step['delivery']['loss_pct'] or 0:.2f}% | TTFF p50 {ttff['p50']} ms"
            + (f" (alone {ttff['lone']['p50']})" if ttff.get("lone") else "") + " | "
            f"latency p50 {lat['p50']} p99 {lat['p99']} ms | "
            f"load CPU {100 * (step['loadgen']['cpu_fraction'] or 0):.0f}%"
            f" | {'ok' if step['ok'] else 'BROKEN: ' + '; '.join(step['reasons'])}"
            + "".join(f"\n        warning: {w}" for w in step.get("warnings", [])))


def _threads_text(step: dict) -> str:
    """` [event loop 3.4, ingest threads 7.5 ms/s]`: where the server's CPU went, by thread (what is above 0.05)."""
    threads = (step.get("server_cpu") or {}).get("threads") or {}
    parts = [f"{label} {figures['ms_per_s']:.1f}" for label, figures in threads.items() if figures["ms_per_s"] >= 0.05]
    return f" [{', '.join(parts)} ms/s]" if parts else ""


def process_label(process: dict) -> str:
    role = process["role"]
    return "w" + role.split()[1] if role.startswith("worker ") else role


def _processes_text(step: dict) -> str:
    """` [control 1.2%, w0 40.1% 100 pl, w1 39.8% 100 pl; relay 110 pkt/s]` with workers; empty without."""
    processes = step.get("server_processes") or []
    if len(processes) < 2:
        return ""
    parts = []
    for proc in processes:
        if proc.get("cpu_fraction") is None:
            parts.append(f"{process_label(proc)} {'restarted' if proc.get('restarted') else 'gone'}")
            continue
        players = f" {proc['players']} pl" if proc.get("players") is not None else ""
        parts.append(f"{process_label(proc)} {100 * proc['cpu_fraction']:.1f}%{players}")
    relay = step.get("relay")
    tail = f"; relay {relay['per_s']:.0f} pkt/s" if relay and relay.get("per_s") is not None else ""
    return " [" + ", ".join(parts) + tail + "]"


def output_path(config: BenchConfig) -> Path:
    """Where the result JSON goes (the PNG, the server log and a profile go next to it)."""
    return Path(config.output or f"artifacts/bench/bench-{time.strftime('%Y%m%d-%H%M%S')}.json")


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    tmp.write_text(json.dumps(result, indent=1))
    tmp.chmod(0o644)
    tmp.replace(path)
