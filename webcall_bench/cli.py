"""`webcall bench` / `python -m webcall bench`: viewers per core, time to first frame, added latency.

    python -m webcall bench                                 # ramp 10→200 players on a server it starts
    python -m webcall bench --steps 10,50,100 --window 10
    python -m webcall bench --steps 10:400:x1.5              # geometric ramp until something breaks
    python -m webcall bench --url ws://127.0.0.1:8080/ --server-pid 1234   # a server already running
    python -m webcall bench --workers 2 --placement spread   # media workers; CPU per process, relayed packets
    python -m webcall bench --steps 10,100,200 --repeat 3 --versus=--event-loop=asyncio   # A/B, median and range
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from .runner import Bench, BenchConfig, output_path, write_json


INTERRUPTED = 130  # the exit status of a run stopped with Ctrl-C (128 + SIGINT)


def parse_steps(text: str) -> list[int]:
    """`10,25,50` or `START:STOP:+STEP` or `START:STOP:xFACTOR`."""
    if ":" not in text:
        steps = [int(part) for part in text.split(",") if part.strip()]
    else:
        start_s, stop_s, how = (text.split(":") + ["x2"])[:3]
        start, stop = int(start_s), int(stop_s)
        steps, n = [], float(start)
        while round(n) <= stop:
            if not steps or round(n) != steps[-1]:
                steps.append(round(n))
            if how.startswith("+"):
                n += float(how[1:])
            else:
                factor = float(how.lstrip("x*"))
                if factor <= 1:
                    raise argparse.ArgumentTypeError("the factor must be > 1")
                n *= factor
        if steps[-1] != stop:
            steps.append(stop)
    if not steps or any(s <= 0 for s in steps):
        raise argparse.ArgumentTypeError(f"bad steps {text!r}")
    return sorted(set(steps))


def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="webcall bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--url", help="signalling URL of a running server (default: start one on 127.0.0.1)")
    p.add_argument("--server-pid", type=int, help="pid of that server, for CPU figures (found by its media port "
                                                  "when it runs on this host); its media workers are found as its "
                                                  "children")
    p.add_argument("--rest-url", help="REST base URL of that server (http://127.0.0.1:8081), for players per worker "
                                      "and relayed packets from its /metrics")
    p.add_argument("--workers", type=int, default=None,
                   help="--workers of the server it starts (default 1: one process, the figures before workers; "
                        "the server's own default is one per core)")
    p.add_argument("--placement", choices=("fill", "spread"), default=None,
                   help="--placement of the server it starts (default: the server's, fill); spread relays every "
                        "stream to the other workers")
    p.add_argument("--baseline", default="",
                   help="a --workers 1 result JSON with the same steps: estimates µs per relayed packet at each "
                        "step (see webcall_bench/relaycost.py)")
    p.add_argument("--steps", type=parse_steps, default=d.steps,
                   help="players at each step: 10,25,50 or 10:200:+10 or 10:1000:x1.5 (default: 10,25,50,100,150,200)")
    p.add_argument("--players", type=int, help="one step with this many players (instead of --steps)")
    p.add_argument("--publishers", type=int, default=d.publishers, help="streams; players are spread over them")
    p.add_argument("--codec", choices=("VP8", "H264"), default=d.codec, type=str.upper, help="publisher video codec")
    p.add_argument("--size", default=f"{d.width}x{d.height}", help="video size WxH (default 640x480)")
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--bitrate", type=int, default=d.bitrate, help="video bitrate in bit/s (default 600000)")
    p.add_argument("--pacing-factor", type=float, default=d.pacing_factor,
                   help="publishers pace video at this × --bitrate, as browsers do (default 2.5, Chrome's); "
                        "0 sends each frame as one burst")
    p.add_argument("--audio-bitrate", type=int, default=d.audio_bitrate, help="Opus bitrate (default 32000)")
    p.add_argument("--clip-seconds", type=float, default=d.clip_seconds,
                   help="length of the encoded clip the publishers loop (one keyframe each; default 10)")
    p.add_argument("--window", type=float, default=d.window, help="seconds measured per step (default 10)")
    p.add_argument("--settle", type=float, default=d.settle, help="seconds between joining and measuring")
    p.add_argument("--join-concurrency", type=int, default=d.join_concurrency)
    p.add_argument("--probe-joins", type=int, default=d.probe_joins,
                   help="after each window, players that join one at a time: TTFF of a lone joiner (default 10)")
    p.add_argument("--min-delivery", type=float, default=d.min_delivery,
                   help="a step passes only if every player got this share of the packets (default 0.99)")
    p.add_argument("--max-latency-ms", type=float, default=d.max_latency_ms,
                   help="a step passes only if latency p99 is under this (default 50)")
    p.add_argument("--no-pin", action="store_true",
                   help="don't give the server CPUs of its own (by default it gets the last one — with N workers the "
                        "last N, one per worker, keeping one for the load generator — and the load generator the "
                        "others; every thread of every process)")
    p.add_argument("--keep-going", action="store_true", help="run every step even after one broke")
    p.add_argument("--sample-every", type=int, default=d.sample_every,
                   help="players decrypt one packet in this many to check integrity (default 100)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the minimal-loop measurement")
    p.add_argument("--ceiling-packets", type=int, default=d.ceiling_packets)
    p.add_argument("--no-compiled-ceiling", action="store_true",
                   help="skip the compiled ceiling (the fan-out core's loop in C, measured at every step's fan-out)")
    p.add_argument("--compiled-packets", type=int, default=d.compiled_packets,
                   help="publisher packets per fan-out for the compiled ceiling, paced at the stream's rate")
    p.add_argument("--profile", action="store_true",
                   help="py-spy record the server during each window (top functions go into the JSON)")
    p.add_argument("--profile-native", action="store_true",
                   help="--profile with C frames too (libsrtp, sendto); py-spy then stops the server for every "
                        "sample, which distorts latency and delivery badly at a few hundred players")
    p.add_argument("--server-arg", action="append", default=[], dest="server_args", metavar="ARG",
                   help="extra argument for the server it starts (repeat: --server-arg=--consent-timeout=60)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="run the whole bench K times and report every step's figures as median (lowest–highest): "
                        "one run on a shared machine moves by ±15–30 %% (webcall_bench/repeat.py)")
    p.add_argument("--versus", action="append", default=[], metavar="ARG",
                   help="with --repeat: alternate the runs between the server as given and one started with ARG "
                        "added (repeat for several arguments), and summarise each apart")
    p.add_argument("--output", "-o", default="", help="result JSON (default artifacts/bench/bench-<time>.json); "
                                                      "the PNG and the server log go next to it")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    width, _, height = args.size.lower().partition("x")
    return BenchConfig(
        url=args.url, server_pid=args.server_pid, steps=[args.players] if args.players else args.steps,
        publishers=args.publishers, codec=args.codec, width=int(width), height=int(height), fps=args.fps,
        bitrate=args.bitrate, audio_bitrate=args.audio_bitrate, clip_seconds=args.clip_seconds, window=args.window,
        settle=args.settle, join_concurrency=args.join_concurrency, probe_joins=args.probe_joins, pacing_factor=args.pacing_factor,
        min_delivery=args.min_delivery, max_latency_ms=args.max_latency_ms, stop_at_knee=not args.keep_going,
        sample_every=args.sample_every, ceiling=not args.no_ceiling, ceiling_packets=args.ceiling_packets,
        compiled_ceiling=not (args.no_ceiling or args.no_compiled_ceiling), compiled_packets=args.compiled_packets,
        pin=not args.no_pin, profile=args.profile or args.profile_native, profile_native=args.profile_native,
        server_args=args.server_args, workers=args.workers or 1, placement=args.placement, rest_url=args.rest_url,
        baseline=args.baseline, output=args.output, plot=not args.no_plot,
        progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.url and (args.workers is not None or args.placement):
        parser.error("--workers and --placement are for the server the bench starts (not with --url)")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.baseline and not Path(args.baseline).is_file():
        parser.error(f"--baseline {args.baseline}: no such file")
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    if args.versus and args.url:
        parser.error("--versus is for the server the bench starts (not with --url)")
    cfg = config_from_args(args)
    if args.repeat > 1 or args.versus:
        return run_repeated(cfg, args.repeat, args.versus)
    return run_once(cfg)


def run_repeated(cfg: BenchConfig, repeat: int, versus: list[str]) -> int:
    """The bench `repeat` times (alternating with the --versus server, if any); each run's JSON beside the summary."""
    from . import targets
    from .repeat import summarize
    from .repeat import table as summary_table

    out = output_path(cfg)
    variants = [list(cfg.server_args)] + ([[*cfg.server_args, *versus]] if versus else [])
    runs: list[list[dict]] = [[] for _ in variants]
    paths: list[list[str]] = [[] for _ in variants]
    code = 0
    for i in range(repeat * len(variants)):
        v = i % len(variants)
        name = f"{out.stem}.run{i // len(variants) + 1}" + ("ab"[v] if versus else "") + out.suffix
        run_cfg = dataclasses.replace(cfg, output=str(out.with_name(name)), server_args=variants[v])
        print(f"run {i // len(variants) + 1}/{repeat}"
              + (f" server args {' '.join(variants[v]) or '(none)'}" if versus else ""), file=sys.stderr)
        outcome = run_once(run_cfg, runs[v])
        paths[v].append(run_cfg.output)
        code = code or outcome
        if outcome == INTERRUPTED:  # Ctrl-C ends the repetition; what ran is still summarised
            break
    summary = {"repeat": repeat, "variants": [
        {"server_args": args, "runs": paths[v], "summary": summarize(runs[v])} for v, args in enumerate(variants)]}
    verdicts = [targets.judge(targets.points_of_summary(variant["summary"]), targets.median_capacity(runs[v]))
                for v, variant in enumerate(summary["variants"])]
    for variant, judged in zip(summary["variants"], verdicts):
        variant["targets"] = targets.as_json(judged)
    write_json(summary, out)
    for variant, judged in zip(summary["variants"], verdicts):
        title = f"server args: {' '.join(variant['server_args']) or '(none)'}" if versus else ""
        print(summary_table(variant["summary"], title))
        print(targets.text(judged) + " (on the medians)")
    print(f"summary: {out}")
    return code


def run_once(cfg: BenchConfig, results: list[dict] | None = None) -> int:
    """One run of the bench: its JSON, plot and table; the result is appended to `results` if given."""
    bench = Bench(cfg)
    out = bench.output
    try:
        result = asyncio.run(bench.run())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        result = bench.result
        result["interrupted"] = True
    except Exception as exc:  # noqa: BLE001 - reported, and what was measured is kept
        print(f"\nbench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        result = bench.result
        result["error"] = f"{type(exc).__name__}: {exc}"
    from . import targets
    from .relaycost import estimate
    from .report import plot, table

    if cfg.baseline and result.get("steps"):
        result["relay_cost"] = estimate(result, load(cfg.baseline))

    if cfg.plot and result.get("steps"):
        try:
            result["plot"] = str(plot(result, out.with_suffix(".png")))
        except Exception as exc:  # noqa: BLE001
            print(f"plot failed: {exc}", file=sys.stderr)
    verdicts = targets.judge(targets.points_of_run(result), targets.capacity_of_run(result))
    result["targets"] = targets.as_json(verdicts)
    result["output"] = str(out)
    write_json(result, out)
    print(table(result))
    if result.get("steps"):
        print(targets.text(verdicts))
    print(f"results: {out}" + (f"  plot: {result['plot']}" if result.get("plot") else ""))
    if results is not None:
        results.append(result)
    return INTERRUPTED if result.get("interrupted") else 1 if result.get("error") else 0


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


if __name__ == "__main__":
    sys.exit(main())
