"""What a relayed packet costs, from two bench runs at the same players: one with `--workers 1` (the baseline,
no relay) and one with `--workers 2 --placement spread` (every stream relayed once to the other worker).

    python -m webcall_bench.relaycost artifacts/bench/w1.json artifacts/bench/w2-spread.json
    webcall bench --workers 2 --placement spread --baseline artifacts/bench/w1.json ...   # the same, at the end

Per step (matched by players):

    µs per relayed packet = (CPU of the 2-worker run − CPU of the 1-worker run for the same forwarded packets)
                            ÷ packets the relay sockets sent in the window

"For the same forwarded packets": the baseline's µs per forwarded packet × this run's forwarded packets, not its
raw CPU seconds — the two windows never forward exactly the same number of packets (window edges, the
publisher's pacing), and the difference would be charged to the relay. Both runs' idle CPU (`server.idle`:
publishers but no player, so no relay) is taken out first, at its rate over each window: otherwise the second
worker's fixed cost (its event loop, timers, stats reports every 0.5 s) is charged to the relay, and it
dominates at a few players. What remains is what the split costs per relayed packet: the relay's send and receive (decrypted RTP over loopback UDP, one sendto and one
recv each), the second fan-out's per-publisher-packet work, a second event loop, the workers' stats reports
and the control channel — an upper bound on the relay socket alone (`python -m webcall.workers.relay_bench`
measures that in isolation). With one publisher a packet is relayed once while every player gets one: at 200
players relayed packets are 0.5 % of forwarded ones, and the difference is small against run-to-run noise —
`share_of_cpu` says how much of the run's CPU it is, flagged below 5 %; more publishers (so more relays per
player) make it measurable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NOISE_SHARE = 0.05  # below this share of the run's CPU the difference is within what two runs differ by


def estimate(run: dict, baseline: dict) -> list[dict]:
    base_steps = {s["players"]: s for s in baseline.get("steps", [])}
    out = []
    for step in run.get("steps", []):
        relay = step.get("relay") or {}
        cpu = step.get("server_cpu") or {}
        base = base_steps.get(step["players"])
        entry: dict = {"players": step["players"], "relayed_packets": relay.get("packets_sent")}
        if base is None or not (base.get("server_cpu") or {}).get("us_per_packet"):
            entry["note"] = "no baseline step with these players"
        elif not relay.get("packets_sent"):
            entry["note"] = "no relayed packet in this run (--workers 2 --placement spread relays every stream)"
        elif not cpu.get("seconds"):
            entry["note"] = "no server CPU figure in this run"
        else:
            forwarded = step["delivery"]["packets_received"]
            idle_run, idle_base = _idle(run), _idle(baseline)
            corrected = idle_run is not None and idle_base is not None
            run_busy = cpu["seconds"] - (idle_run * step["window_s"] if corrected else 0.0)
            base_busy = base["server_cpu"]["seconds"] - (idle_base * base["window_s"] if corrected else 0.0)
            base_seconds = base_busy / base["delivery"]["packets_received"] * forwarded
            extra = run_busy - base_seconds
            entry.update({
                "idle_corrected": corrected,
                "cpu_seconds": cpu["seconds"], "baseline_cpu_seconds_same_packets": round(base_seconds, 3),
                "baseline_cpu_seconds_raw": base["server_cpu"]["seconds"],
                "extra_cpu_seconds": round(extra, 3),
                "us_per_relayed_packet": round(1e6 * extra / relay["packets_sent"], 2),
                # the brief's plain difference, for comparison: raw CPU seconds of the two windows
                "us_per_relayed_packet_raw": round(1e6 * (cpu["seconds"] - base["server_cpu"]["seconds"])
                                                   / relay["packets_sent"], 2),
                "share_of_cpu": round(extra / cpu["seconds"], 4),
            })
            notes = []
            if extra < 0:
                notes.append("the 2-worker run used less CPU than the baseline: noise, not a figure")
            elif extra < NOISE_SHARE * cpu["seconds"]:
                notes.append(f"the difference is {100 * extra / cpu['seconds']:.1f}% of the run's CPU: within "
                             "run-to-run noise; more publishers make it measurable")
            unclean = [w for s in (step, base) for w in s.get("warnings", []) if "other processes" in w]
            if unclean or not (step.get("ok") and base.get("ok")):
                notes.append("a step broke or the machine was busy in one of the runs: figures are not clean")
            if notes:
                entry["note"] = "; ".join(notes)
        out.append(entry)
    cfg, base_cfg = run.get("config", {}), baseline.get("config", {})
    for key in ("publishers", "codec", "bitrate", "fps", "window"):
        if cfg.get(key) != base_cfg.get(key):
            out.append({"note": f"the runs differ in {key}: {base_cfg.get(key)} (baseline) vs {cfg.get(key)}"})
    return out


def _idle(result: dict) -> float | None:
    """The server's CPU fraction without players (the run's `server.idle`), if it was measured."""
    idle = (result.get("server") or {}).get("idle") or {}
    return idle.get("cpu_fraction")


def lines(estimates: list[dict]) -> list[str]:
    text = []
    for e in estimates:
        if "players" not in e:
            text.append(f"relay cost: {e['note']}")
        elif "us_per_relayed_packet" in e:
            text.append(f"relay cost at {e['players']} players: {e['us_per_relayed_packet']:.1f} µs per relayed packet "
                        f"({e['extra_cpu_seconds']:.3f} s CPU over the 1-worker run for the same forwarded packets"
                        f"{', idle CPU taken out of both' if e.get('idle_corrected') else ''}, "
                        f"{e['relayed_packets']} relayed packets, {100 * e['share_of_cpu']:.1f}% of the CPU; plain "
                        f"difference {e['us_per_relayed_packet_raw']:.1f} µs)" + (f" — {e['note']}" if e.get("note") else ""))
        else:
            text.append(f"relay cost at {e['players']} players: - ({e['note']})")
    return text


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m webcall_bench.relaycost BASELINE_1_WORKER.json RUN_2_WORKERS.json", file=sys.stderr)
        return 2
    baseline, run = (json.loads(Path(a).read_text()) for a in args)
    print("\n".join(lines(estimate(run, baseline))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
