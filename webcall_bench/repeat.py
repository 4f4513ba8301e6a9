"""`--repeat K`: the same bench K times, each step's figures as a median with their range.

On a shared machine one run of the bench moves by ±15–30 % against the next (the hypervisor's steal, the
neighbours' caches), more than most changes to the server can: a ratio from one run can neither show nor refute a
target. So the bench can run K times in a row — each run whole: its own ceilings before and after, its own server —
and put, for every step, the median of each figure beside its lowest and highest value. With `--versus ARG` the
runs alternate between two servers (the second one started with ARG added), and each is summarised apart: an A/B
whose halves share the machine's moods.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

# (name in the summary, how to read it from a step, format in the table)
FIGURES: tuple[tuple[str, Callable[[dict], float | None], str], ...] = (
    ("us_per_packet", lambda s: (s.get("server_cpu") or {}).get("us_per_packet"), ".1f"),
    ("ratio_to_ceiling", lambda s: (s.get("server_cpu") or {}).get("ratio_to_ceiling"), ".2f"),
    ("ratio_to_compiled", lambda s: (s.get("server_cpu") or {}).get("ratio_to_compiled"), ".2f"),
    ("fanout_ratio_to_compiled", lambda s: (s.get("server_cpu") or {}).get("fanout_ratio_to_compiled"), ".2f"),
    ("ratio_to_compiled_woken", lambda s: (s.get("server_cpu") or {}).get("ratio_to_compiled_woken"), ".2f"),
    ("players_per_core", lambda s: (s.get("server_cpu") or {}).get("players_per_core"), ".0f"),
    ("latency_p99_ms", lambda s: (s.get("latency_ms") or {}).get("p99"), ".2f"),
    ("loss_pct", lambda s: (s.get("delivery") or {}).get("loss_pct"), ".2f"),
)
FITS = (("server", "fixed_us"), ("server", "per_player_us"), ("compiled", "fixed_us"), ("compiled", "per_player_us"))


def spread(values: list[float]) -> dict | None:
    """Median, lowest and highest of the values measured (None when no run measured it)."""
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict]) -> dict:
    """Every step's figures over the runs that reached it, and the fits over the runs that have one."""
    players = sorted({s["players"] for run in runs for s in run.get("steps", [])})
    steps = []
    for n in players:
        found = [s for run in runs for s in run.get("steps", []) if s["players"] == n]
        row: dict = {"players": n, "runs": len(found), "ok": sum(1 for s in found if s.get("ok"))}
        for name, read, _ in FIGURES:
            row[name] = spread([v for v in map(read, found) if v is not None])
        steps.append(row)
    fits = {}
    for who, term in FITS:
        values = [((run.get("fit") or {}).get(who) or {}).get(term) for run in runs]
        fits[f"{who}_{term}"] = spread([v for v in values if v is not None])
    return {"runs": len(runs), "steps": steps, "fit": fits}


def _cell(figure: dict | None, spec: str) -> str:
    if figure is None:
        return "-"
    if figure["n"] == 1:
        return format(figure["median"], spec)
    return f"{format(figure['median'], spec)} ({format(figure['min'], spec)}–{format(figure['max'], spec)})"


def table(summary: dict, title: str = "") -> str:
    """The summary as text: one row per step, each figure as median (lowest–highest)."""
    header = ("players", "runs ok", "µs/pkt", "x ceil", "x C", "x C fan", "x C woken", "pl/core", "lat p99 ms",
              "loss %")
    rows = [header]
    for step in summary["steps"]:
        rows.append((str(step["players"]), f"{step['ok']}/{step['runs']}",
                     *(_cell(step[name], spec) for name, _, spec in FIGURES)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [title] if title else []
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    fit = summary["fit"]
    if fit.get("server_fixed_us"):
        lines.append("server: " + _cell(fit["server_fixed_us"], ".0f") + " µs per publisher packet + "
                     + _cell(fit["server_per_player_us"], ".2f") + " µs per player")
    if fit.get("compiled_fixed_us"):
        lines.append("compiled ceiling: " + _cell(fit["compiled_fixed_us"], ".0f") + " µs per publisher packet + "
                     + _cell(fit["compiled_per_player_us"], ".2f") + " µs per player")
    lines.append(f"median (lowest–highest) over {summary['runs']} runs")
    return "\n".join(lines)
