"""/metrics with media workers: each worker's pid, the players and publishers placed on it, its relay packets
(what `webcall bench --workers N` reads). Without workers none of these families appear."""

from __future__ import annotations

from types import SimpleNamespace

from webcall.hooks.client import HookStats
from webcall.server import prometheus
from webcall.workers.control import AggregatePort, RemotePlayer, RemotePublisher


def _endpoint(cls: type, worker: int) -> object:
    endpoint = object.__new__(cls)  # only `worker` is read
    endpoint.worker = worker
    return endpoint


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def _hub(plane: object) -> SimpleNamespace:
    return SimpleNamespace(sessions=[], streams=lambda: [], started_at=0.0, totals=lambda: {}, plane=plane,
                           snapshots=SimpleNamespace(completed=0, failed=0, refused=0),
                           hooks=SimpleNamespace(stats=HookStats()), refusals={})


def test_worker_families() -> None:
    handles = {i: SimpleNamespace(pid=100 + i, media_port=0, hello={"media_port": 5000 + i}) for i in (0, 1)}
    endpoints = [_endpoint(RemotePublisher, 0), _endpoint(RemotePlayer, 0), _endpoint(RemotePlayer, 1),
                 _endpoint(RemotePlayer, 1), _endpoint(RemotePlayer, 1)]
    plane = SimpleNamespace(supervisor=SimpleNamespace(workers=handles, losses=[(1, "killed by SIGKILL")]), endpoints=dict(enumerate(endpoints)),
                            relay_stats={0: {"sent": 70, "received": 0}, 1: {"sent": 0, "received": 69}})
    samples = _samples(prometheus.render(_hub(plane), AggregatePort()))
    assert samples['webcall_worker_info{worker="1",pid="101",media_port="5001"}'] == 1
    assert samples['webcall_worker_players{worker="0"}'] == 1
    assert samples['webcall_worker_players{worker="1"}'] == 3
    assert samples['webcall_worker_publishers{worker="0"}'] == 1
    assert samples['webcall_worker_publishers{worker="1"}'] == 0
    assert samples['webcall_relay_packets_total{worker="0",direction="sent"}'] == 70
    assert samples['webcall_relay_packets_total{worker="1",direction="received"}'] == 69


def test_no_worker_families_in_one_process() -> None:
    text = prometheus.render(_hub(SimpleNamespace(port=None)), AggregatePort())
    assert "webcall_worker" not in text and "webcall_relay" not in text
