"""/metrics in the Prometheus text exposition format (0.0.4), written by hand: no client library needed.

Everything comes from the hub (sessions, streams, media counters of live and ended streams) and from the
media port's own counters (dropped datagrams, contained errors, the sampled fan-out cost). With media workers
(--workers 2 or more) also, read-only from the control process's `WorkerPlane`: each worker's pid, the players
and publishers placed on it, and its relay socket's packet counters (as of its last stats report).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

from ..workers.control import RemotePlayer, RemotePublisher

from ..limits import LIMIT_NAMES

if TYPE_CHECKING:
    from ..media.port import MediaPort
    from ..wcs.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = ("audio", "video")

# (name in the hub's totals, help). Exposed as webcall_<name>_total{kind="audio"|"video"}.
MEDIA_COUNTERS = (
    ("rtp_packets_received", "RTP packets received from publishers (retransmissions included, duplicates not)"),
    ("rtp_payload_bytes_received", "RTP payload bytes received from publishers"),
    ("rtp_packets_recovered", "Publisher packets recovered by a NACK retransmission"),
    ("nacks_sent", "NACK packets sent to publishers"),
    ("keyframe_requests_sent", "PLI keyframe requests sent to publishers"),
    ("rtp_packets_sent", "RTP packets forwarded to players (retransmissions not included)"),
    ("rtp_payload_bytes_sent", "RTP bytes after the fixed header (payload and header extensions) forwarded to players"),
    ("retransmissions", "Packets retransmitted to players in answer to their NACKs"),
    ("nacks_received", "NACK packets received from players"),
    ("keyframe_requests_received", "PLI/FIR keyframe requests received from players"),
)


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        label_text = ""
        if labels:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            label_text = "{" + inner + "}"
        self.lines.append(f"{name}{label_text} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(hub: Hub, port: MediaPort) -> str:
    w = _Writer()
    streams = hub.streams()

    w.family("webcall_sessions", "gauge", "Open WebSocket sessions")
    w.sample("webcall_sessions", len(hub.sessions))
    w.family("webcall_streams", "gauge", "Published streams (any status before the final one)")
    w.sample("webcall_streams", sum(1 for s in streams if s.published and not s.closed))
    w.family("webcall_players", "gauge", "Players (any status before the final one)")
    w.sample("webcall_players", sum(1 for s in streams if not s.published and not s.closed))
    w.family("webcall_start_time_seconds", "gauge", "Unix time the server started")
    w.sample("webcall_start_time_seconds", round(hub.started_at, 3))

    totals = hub.totals()
    for key, help_text in MEDIA_COUNTERS:
        name = f"webcall_{key}_total"
        w.family(name, "counter", help_text)
        for kind in KINDS:
            w.sample(name, totals.get((key, kind), 0), {"kind": kind})

    w.family("webcall_media_datagrams_dropped_total", "counter",
             "UDP datagrams on the media port that no connection could take")
    w.sample("webcall_media_datagrams_dropped_total", port.dropped)
    w.family("webcall_media_errors_total", "counter", "Exceptions contained at the media port (each ended one connection)")
    w.sample("webcall_media_errors_total", port.errors)

    w.family("webcall_ice_tcp_connections", "gauge", "Open ICE-TCP media connections (media/tcp.py)")
    w.sample("webcall_ice_tcp_connections", len(port.links))
    w.family("webcall_ice_tcp_refused_total", "counter",
             "ICE-TCP connections closed for bad input (framing, no valid STUN check, too many unverified)")
    w.sample("webcall_ice_tcp_refused_total", port.tcp_refused)

    # --- guardrails (webcall/limits.py): signalling refusals from the hub, media-plane ones from the port(s) ---
    refusals: Counter[str] = Counter(hub.refusals)
    refusals.update(port.refusals)
    w.family("webcall_refusals_total", "counter",
             "Requests refused by a configured limit (media-plane limits apply per media worker)")
    for limit in LIMIT_NAMES:
        w.sample("webcall_refusals_total", refusals.get(limit, 0), {"limit": limit})

    snaps = hub.snapshots
    w.family("webcall_snapshots_total", "counter", "Snapshot jobs by result (refused: too many at once)")
    for result, value in (("completed", snaps.completed), ("failed", snaps.failed), ("refused", snaps.refused)):
        w.sample("webcall_snapshots_total", value, {"result": result})

    ingest = port.ingest_counts
    for name, value, help_text in (
            ("webcall_ingest_datagrams_total", ingest.datagrams,
             "Datagrams of publishers read by ingest threads (media/ingest.py), not by the event loop"),
            ("webcall_ingest_forwarded_total", ingest.forwarded,
             "Publisher packets an ingest thread forwarded to players before Python saw them"),
            ("webcall_ingest_overflow_total", ingest.overflow,
             "Publisher packets Python never saw: an ingest thread's queue was full (the players still got them)"),
            ("webcall_ingest_wakeups_total", ingest.wakes,
             "Times an ingest thread woke the event loop to take in what it had queued"),
            ("webcall_core_sender_reports_total", port.core_reports,
             "Players' RTCP sender reports built and sent by the compiled core (media/reports.py); the others are "
             "sent in Python")):
        w.family(name, "counter", help_text)
        w.sample(name, value)

    cost = port.fanout_cost
    w.family("webcall_fanout_seconds", "histogram",
             "Time to forward one publisher packet to all of its players (1 fan-out in 64 is timed)")
    for bound, count in cost.cumulative():
        w.sample("webcall_fanout_seconds_bucket", count, {"le": _number(bound)})
    w.sample("webcall_fanout_seconds_sum", cost.sum_ns / 1e9)
    w.sample("webcall_fanout_seconds_count", cost.samples)
    w.family("webcall_fanout_players_total", "counter",
             "Players reached by the timed fan-outs (fanout_seconds_sum / this = seconds per forwarded packet)")
    w.sample("webcall_fanout_players_total", cost.players)
    w.family("webcall_fanout_cpu_seconds", "counter",
             "CPU time the forwarding thread spent in the timed fan-outs (/ fanout_players_total = CPU seconds per "
             "forwarded packet)")
    w.sample("webcall_fanout_cpu_seconds_total", cost.cpu_ns / 1e9)

    _hooks(w, hub)
    _workers(w, getattr(hub, "plane", None))
    return w.text()


def _hooks(w: _Writer, hub: Hub) -> None:
    """REST hooks (webcall/hooks): invocations by outcome, errors, and events posted, failed or dropped."""
    stats = hub.hooks.stats
    w.family("webcall_hook_invocations_total", "counter", "Hooks that can deny, by app, method and outcome")
    for (app, method, outcome), value in sorted(stats.invocations.items()):
        w.sample("webcall_hook_invocations_total", value, {"app": app, "method": method, "outcome": outcome})
    w.family("webcall_hook_errors_total", "counter", "Hooks with no usable answer (timeout, refused, bad JSON)")
    for (app, method), value in sorted(stats.errors.items()):
        w.sample("webcall_hook_errors_total", value, {"app": app, "method": method})
    for name, counter, help_text in (
        ("webcall_hook_events_posted_total", stats.events_posted, "Hook events the backend accepted"),
        ("webcall_hook_events_failed_total", stats.events_failed, "Hook events the backend refused or never got"),
        ("webcall_hook_events_dropped_total", stats.events_dropped,
         "Hook events dropped: the client's queue was full (a slow or dead backend) or closed"),
    ):
        w.family(name, "counter", help_text)
        for (app, method), value in sorted(counter.items()):
            w.sample(name, value, {"app": app, "method": method})
    w.family("webcall_hook_keep_alive_terminations_total", "counter", "Streams ended by a StreamKeepAliveEvent 403")
    w.sample("webcall_hook_keep_alive_terminations_total", stats.keep_alive_terminations)


def _workers(w: _Writer, plane: object) -> None:
    """The media workers' families; nothing without workers (one process: its own plane has no `supervisor`)."""
    supervisor = getattr(plane, "supervisor", None)
    if supervisor is None:
        return
    handles = sorted(supervisor.workers.items())
    w.family("webcall_media_workers", "gauge", "Media worker processes running")
    w.sample("webcall_media_workers", len(handles))
    w.family("webcall_media_worker_losses_total", "counter",
             "Media workers that died or stopped answering (each was replaced)")
    w.sample("webcall_media_worker_losses_total", len(supervisor.losses))
    w.family("webcall_worker_info", "gauge", "A media worker process: its index, pid and UDP media port (value 1)")
    for index, handle in handles:
        w.sample("webcall_worker_info", 1, {"worker": str(index), "pid": str(handle.pid),
                                            "media_port": str(handle.hello.get("media_port", handle.media_port))})
    players: dict[int, int] = {index: 0 for index, _ in handles}
    publishers: dict[int, int] = dict(players)
    for endpoint in list(plane.endpoints.values()):  # type: ignore[attr-defined]
        if isinstance(endpoint, RemotePlayer):
            players[endpoint.worker] = players.get(endpoint.worker, 0) + 1
        elif isinstance(endpoint, RemotePublisher):
            publishers[endpoint.worker] = publishers.get(endpoint.worker, 0) + 1
    w.family("webcall_worker_players", "gauge", "Players placed on each media worker")
    for index, count in sorted(players.items()):
        w.sample("webcall_worker_players", count, {"worker": str(index)})
    w.family("webcall_worker_publishers", "gauge", "Publishers placed on each media worker")
    for index, count in sorted(publishers.items()):
        w.sample("webcall_worker_publishers", count, {"worker": str(index)})
    relay_stats: dict[int, dict[str, int]] = getattr(plane, "relay_stats", {})
    w.family("webcall_relay_packets_total", "counter",
             "Media packets a worker's relay socket sent to other workers or received from them (its last report; "
             "a replaced worker starts again from 0)")
    for index, stats in sorted(relay_stats.items()):
        for direction in ("sent", "received"):
            w.sample("webcall_relay_packets_total", stats.get(direction, 0),
                     {"worker": str(index), "direction": direction})
