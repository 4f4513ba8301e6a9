"""Reading a bench result: the text table and the PNG plot (server CPU, loss and latency against players)."""

from __future__ import annotations

from pathlib import Path


def _fmt(value, spec: str = "", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec)


def compiled_lines(result: dict) -> list[str]:
    """The compiled ceiling fan-out by fan-out, and both fits (fixed + N × per-player per publisher packet)."""
    lines = []
    compiled = result.get("compiled_ceiling")
    if compiled:
        parts = [f"{r['fanout']}: {r['us_per_forwarded_packet']:.2f} ({r['us_user_per_forwarded_packet']:.2f} user "
                 f"+ {r['us_sys_per_forwarded_packet']:.2f} sys)" for r in compiled["fanouts"].values()]
        lines.append("compiled ceiling (the fan-out core's loop in C, paced at the stream's "
                     f"{compiled['rate_pps']:.0f} pkt/s), µs per forwarded packet at fan-out " + ", ".join(parts)
                     + (" (the cheaper of a run before and one after the steps)" if compiled.get("runs") else ""))
        woken = [f"{r['fanout']}: {r['us_per_forwarded_packet_woken']:.2f}" for r in compiled["fanouts"].values()
                 if r.get("us_per_forwarded_packet_woken")]
        if woken:
            lines.append("  the same loop waiting in recv for each packet (its wake-ups counted, as a server's receiving "
                         "thread pays them): " + ", ".join(woken))
    fits = result.get("fit") or {}
    for name, label in (("server", "server"), ("compiled", "compiled ceiling")):
        fit = fits.get(name)
        if fit:
            lines.append(f"{label}: {fit['fixed_us']:.1f} µs per publisher packet + {fit['per_player_us']:.2f} µs "
                         "per player (least squares over the fan-outs)")
    return lines


def table(result: dict) -> str:
    """The per-step table, plus the ceiling and the knee."""
    head = ("players", "srv CPU%", "kernel%", "ms/s/pl", "µs/pkt", "user/sys", "x ceil", "x C", "x C fan", "x C woken", "pl/core",
            "loss% (worst)", "kbps/pl",
            "TTFF p50/p95 ms", "alone p50/p95", "lat p50/p99 ms", "srv MB", "KB/pl", "load CPU%", "lag p99 ms", "ok")
    rows = [head]
    for s in result.get("steps", []):
        cpu = s.get("server_cpu") or {}
        d = s["delivery"]
        worst = None if d["min_ratio"] is None else 100 * max(0.0, 1 - d["min_ratio"])
        lone = s["ttff_ms"].get("lone") or {}
        rows.append((
            str(s["players"]),
            _fmt(None if cpu.get("fraction") is None else 100 * cpu["fraction"], ".1f"),
            _fmt(None if cpu.get("sys_share") is None else 100 * cpu["sys_share"], ".0f"),
            _fmt(cpu.get("ms_per_s_per_player"), ".3f"),
            _fmt(cpu.get("us_per_packet"), ".1f"),
            f"{_fmt(cpu.get('us_user_per_packet'), '.1f')}/{_fmt(cpu.get('us_sys_per_packet'), '.1f')}",
            _fmt(cpu.get("ratio_to_ceiling"), ".2f"),
            _fmt(cpu.get("ratio_to_compiled"), ".2f"),
            _fmt(cpu.get("fanout_ratio_to_compiled"), ".2f"),
            _fmt(cpu.get("ratio_to_compiled_woken"), ".2f"),
            _fmt(cpu.get("players_per_core"), ".0f"),
            f"{_fmt(d['loss_pct'], '.2f')} ({_fmt(worst, '.2f')})",
            _fmt(d["kbps_per_player"], ".0f"),
            f"{_fmt(s['ttff_ms']['p50'], '.0f')}/{_fmt(s['ttff_ms']['p95'], '.0f')}",
            f"{_fmt(lone.get('p50'), '.0f')}/{_fmt(lone.get('p95'), '.0f')}",
            f"{_fmt(s['latency_ms']['p50'], '.2f')}/{_fmt(s['latency_ms']['p99'], '.2f')}",
            _fmt(s["memory"].get("server_rss_mb"), ".0f"),
            _fmt(s["memory"].get("per_player_kb"), ".0f"),
            _fmt(None if s["loadgen"]["cpu_fraction"] is None else 100 * s["loadgen"]["cpu_fraction"], ".0f"),
            _fmt(s["loadgen"]["read_lag_ms_p99"], ".2f"),
            "yes" if s["ok"] else "NO",
        ))
    lines = _grid(rows)
    lines += _processes(result)
    c = result.get("ceiling")
    if c:
        lines.append(f"ceiling (minimal Python loop, this machine): {c['us_per_output_packet']:.2f} µs per forwarded "
                     f"packet + {c['us_per_input_packet']:.2f} µs per publisher packet "
                     f"({c['us_per_forwarded_packet']:.2f} µs at fan-out {c['fanout']}, "
                     f"{100 * c.get('sys_share', 0):.0f}% in the kernel, SRTP {c['srtp_profile']}); "
                     f"through pylibsrtp's plain API: {c.get('naive_us_per_output_packet', 0):.2f} + "
                     f"{c.get('naive_us_per_input_packet', 0):.2f} µs")
        if c.get("runs"):
            lines.append("  (mean of a run before and one after the steps: "
                         + " and ".join(f"{r['us_per_output_packet']:.2f}" for r in c["runs"])
                         + " µs per forwarded packet)")
    lines += compiled_lines(result)
    knee = result.get("knee") or {}
    if knee.get("reached"):
        held = (f"{knee['capacity_players']} players held" if knee.get("capacity_players")
                else "below the first step")
        lines.append(f"knee: {held}; {knee['broke_at']} broke ({'; '.join(knee['reasons'])})")
    elif knee:
        lines.append(f"knee: not reached — {knee.get('note')}; at the last step the server ran "
                     f"{_fmt(knee.get('estimated_players_per_core'), '.0f')} players per core")
    for s in result.get("steps", []):
        for failure in s.get("failures", []):
            lines.append(f"  step {s['players']}: {failure}")
        for warning in s.get("warnings", []):
            lines.append(f"  step {s['players']}: warning: {warning}")
    return "\n".join(lines)


def _grid(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _by_index(values: dict | None, index: int | None):
    """A per-worker value (int keys in a run, str keys once read back from JSON)."""
    if not values or index is None:
        return None
    return values.get(index, values.get(str(index)))


def _processes(result: dict) -> list[str]:
    """Each server process per step (the control process, each media worker), the relay, where they ran."""
    lines = []
    pinned = result.get("pinned")
    if pinned and pinned.get("text"):
        lines.append("pinned: " + pinned["text"])
    elif result.get("server", {}).get("started_by_bench"):
        lines.append("pinned: nothing (--no-pin, or one CPU)")
    idle = (result.get("server") or {}).get("idle")
    if idle:
        parts = [f"{p['role']} {100 * p['cpu_fraction']:.1f}%" for p in idle.get("processes", [])
                 if p.get("cpu_fraction") is not None]
        lines.append(f"server without players (publishers only, {idle['window_s']:.0f} s): "
                     f"{100 * idle['cpu_fraction']:.1f}% of a core" + (f" ({', '.join(parts)})" if len(parts) > 1 else ""))
    steps = [s for s in result.get("steps", []) if len(s.get("server_processes") or []) > 1]
    if not steps:
        return lines
    rows = [("players", "process", "pid", "CPU%", "kernel%", "players", "publishers", "relay sent", "relay recv")]
    for s in steps:
        relay = s.get("relay") or {}
        for proc in s["server_processes"]:
            index = proc.get("index")
            frac = proc.get("cpu_fraction")
            rows.append((
                str(s["players"]), proc["role"], str(proc.get("pid", "-")),
                _fmt(None if frac is None else 100 * frac, ".1f",
                     "restarted" if proc.get("restarted") else "gone"),
                _fmt(None if proc.get("sys_share") is None else 100 * proc["sys_share"], ".0f"),
                _fmt(proc.get("players")), _fmt(proc.get("publishers")),
                _fmt(_by_index(relay.get("sent_by_worker"), index)),
                _fmt(_by_index(relay.get("received_by_worker"), index)),
            ))
    lines.append("server processes (CPU % of one core over the window; players and publishers placed on each "
                 "worker, from /metrics; relay: packets over the window):")
    lines += _grid(rows)
    for s in steps:
        control = s.get("control_cpu")
        if control:
            lines.append(f"  step {s['players']}: control process {100 * control['fraction']:.1f}% of a core "
                         f"({'within' if control['within_target'] else 'OVER'} the "
                         f"{100 * control['target']:.0f}% target)")
    from .relaycost import lines as relay_lines

    lines += ["  " + line for line in relay_lines(result.get("relay_cost") or [])]
    return lines


def plot(result: dict, path: Path) -> Path:
    """Server CPU, loss and latency against players, one panel each (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result.get("steps", [])
    x = [s["players"] for s in steps]

    def series(get):
        out = []
        for s in steps:
            try:
                value = get(s)
            except (KeyError, TypeError):
                value = None
            out.append(float("nan") if value is None else value)
        return out

    fig, axes = plt.subplots(4, 1, figsize=(8, 11), sharex=True)
    ax = axes[0]
    ax.plot(x, series(lambda s: 100 * s["server_cpu"]["fraction"]), "o-", label="server CPU (% of a core)")
    ax.plot(x, series(lambda s: 100 * s["loadgen"]["cpu_fraction"]), "s--", color="grey",
            label="load generator CPU (%)")
    ax.plot(x, series(lambda s: 100 * s["machine"]["other_processes_cores"]), "x:", color="brown",
            label="other processes on the machine (%)")
    ax.axhline(100, color="red", lw=0.8, ls=":")
    ax.set_ylabel("CPU %")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    ax.plot(x, series(lambda s: s["server_cpu"]["us_per_packet"]), "o-", label="server µs per forwarded packet")
    ax.plot(x, series(lambda s: s["server_cpu"]["ceiling_us_per_packet"]), "--", color="green",
            label="ceiling: minimal Python loop")
    if any((s.get("server_cpu") or {}).get("compiled_us_per_packet") for s in steps):
        ax.plot(x, series(lambda s: s["server_cpu"]["compiled_us_per_packet"]), ":", color="black",
                label="compiled ceiling: the core's loop in C")
    ax.set_ylabel("µs / packet")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[2]
    ax.plot(x, series(lambda s: s["delivery"]["loss_pct"]), "o-", label="loss, all players (%)")
    ax.plot(x, series(lambda s: 100 * max(0.0, 1 - s["delivery"]["min_ratio"])), "v--", label="loss, worst player (%)")
    ax.axhline(100 * (1 - result["config"]["min_delivery"]), color="red", lw=0.8, ls=":", label="limit")
    ax.set_ylabel("loss %")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[3]
    ax.plot(x, series(lambda s: s["latency_ms"]["p50"]), "o-", label="added latency p50 (ms)")
    ax.plot(x, series(lambda s: s["latency_ms"]["p99"]), "^-", label="added latency p99 (ms)")
    ax.plot(x, series(lambda s: s["ttff_ms"]["p95"]), "s:", color="grey", label="time to first frame p95 (ms)")
    ax.plot(x, series(lambda s: (s["ttff_ms"].get("lone") or {}).get("p95")), "d:", color="black",
            label="... of a lone joiner, p95 (ms)")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_xlabel("players")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3, which="both")

    knee = result.get("knee") or {}
    half = max(0.5, 0.01 * (max(x) - min(x))) if x else 0.5
    for ax in axes:
        for s in steps:
            if not s["ok"]:
                ax.axvspan(s["players"] - half, s["players"] + half, color="red", alpha=0.2, lw=0)
        if knee.get("reached") and knee.get("capacity_players"):
            ax.axvline(knee["capacity_players"], color="red", lw=1, ls="--")
    axes[0].set_title("red: steps that broke; dashed: the knee (last step that held)", fontsize=8)

    cfg = result.get("config", {})
    machine = result.get("machine", {})
    fig.suptitle(f"webcall bench — {cfg.get('publishers')}× {cfg.get('codec')} "
                 f"{cfg.get('width')}x{cfg.get('height')} "
                 f"@ {cfg.get('bitrate', 0) // 1000} kbps + Opus; {machine.get('cpus')} CPUs "
                 f"{machine.get('cpu_model', '')}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
