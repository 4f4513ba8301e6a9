"""Rates, the fan-out histogram, /metrics text, REST body parsing and log formatting, without sockets."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from webcall.logs import OneLineFormatter, q
from webcall.media.port import MediaPort
from webcall.media.stats import FANOUT_BUCKETS, FanoutCost
from webcall.wcs import messages as msg
from webcall.wcs import rest
from webcall.server import prometheus
from webcall.media.plane import MediaPlane
from webcall.wcs.hub import Hub, StreamSettings
from webcall.wcs.rates import RateMeter, Reading


def test_rate_meter_deltas_over_elapsed_time() -> None:
    meter = RateMeter()
    assert meter.update(10.0, Reading(video_octets=1000, frames=5)) is None  # baseline only
    rates = meter.update(12.0, Reading(video_octets=251_000, audio_octets=8000, video_packets=200, frames=65))
    assert rates is not None
    assert (rates.video_rate, rates.audio_rate, rates.fps, rates.interval) == (1_000_000, 32_000, 30, 2.0)
    assert rates.video_packet_rate == 100.0 and meter.latest is rates
    assert meter.update(12.0, Reading()) is None  # no time passed: no rate


def test_rate_meter_takes_rates_between_the_workers_reports() -> None:
    """A worker reports once per interval: the rate is over the reports' own times, whenever we sample. A sample
    that finds the report it already used keeps the baseline and gives the last rates again, once (the SDK wants
    its message a second after the last, spec §7); a second time in a row, nothing."""
    meter = RateMeter()
    assert meter.update(100.0, Reading(video_octets=0, frames=0, at=99.5)) is None
    assert meter.update(100.1, Reading(video_octets=0, frames=0, at=99.5)) is None  # no rates yet to repeat
    # Sampled 0.3 s later than the report: the interval is still the reports' (1 s), not the samples' (1.3 s).
    rates = meter.update(101.3, Reading(video_octets=125_000, frames=30, at=100.5))
    assert rates is not None and (rates.video_rate, rates.fps, rates.interval) == (1_000_000, 30, 1.0)
    assert meter.update(102.3, Reading(video_octets=125_000, frames=30, at=100.5)) == rates  # same report
    assert meter.update(103.3, Reading(video_octets=125_000, frames=30, at=100.5)) is None  # ... and again
    rates = meter.update(104.3, Reading(video_octets=500_000, frames=120, at=103.5))  # three reports later
    assert rates is not None and (rates.video_rate, rates.fps, rates.interval) == (1_000_000, 30, 3.0)
    assert meter.update(105.3, Reading(video_octets=500_000, frames=120, at=103.5)) == rates  # repeats once more


def test_fanout_histogram_buckets() -> None:
    cost = FanoutCost()
    for ns, players in ((3_000, 1), (5_000, 1), (40_000, 4), (10**9, 100)):
        cost.observe(ns, players)
    cumulative = dict(cost.cumulative())
    assert cumulative[5e-6] == 2 and cumulative[50e-6] == 3 and cumulative[FANOUT_BUCKETS[-1]] == 3
    assert cumulative[float("inf")] == cost.samples == 4 and cost.players == 106


def test_metrics_text_parses() -> None:
    settings = StreamSettings()
    hub = Hub(settings, MediaPlane(MediaPort(), None, settings, ()))  # type: ignore[arg-type]
    try:
        hub.retired.update({("rtp_packets_received", "video"): 7, ("nacks_sent", "video"): 2})
        hub.plane.port.fanout_cost.observe(12_000, 3, 9_000)
        text = prometheus.render(hub, hub.plane.port)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert families["webcall_sessions"].type == "gauge"
        assert families["webcall_rtp_packets_received"].type == "counter"
        assert families["webcall_fanout_seconds"].type == "histogram"
        assert samples["webcall_rtp_packets_received_total", (("kind", "video"),)] == 7
        assert samples["webcall_rtp_packets_received_total", (("kind", "audio"),)] == 0
        assert samples["webcall_nacks_sent_total", (("kind", "video"),)] == 2
        assert samples["webcall_fanout_seconds_count", ()] == 1
        assert samples["webcall_fanout_seconds_sum", ()] == pytest.approx(12e-6)
        assert samples["webcall_fanout_cpu_seconds_total", ()] == pytest.approx(9e-6)
        assert families["webcall_fanout_cpu_seconds"].type == "counter"
        assert samples["webcall_fanout_seconds_bucket", (("le", "1e-05"),)] == 0
        assert samples["webcall_fanout_seconds_bucket", (("le", "2.5e-05"),)] == 1
        assert samples["webcall_snapshots_total", (("result", "refused"),)] == 0
    finally:
        hub.snapshots.close()


def test_stream_query_filters() -> None:
    query = rest.parse_stream_query({"name": "a", "published": True, "mediaSessionId": None, "nodeId": "x"})
    assert query.matches(name="a", media_session_id="1", published=True, status="PUBLISHING")
    assert not query.matches(name="a", media_session_id="1", published=False, status="PLAYING")
    assert rest.parse_stream_query({}).empty and not query.empty
    ids = rest.parse_stream_query({"mediaSessionIds": ["1", "2"]})
    assert ids.matches(name="x", media_session_id="2", published=False, status="PLAYING")
    assert not ids.matches(name="x", media_session_id="3", published=False, status="PLAYING")


@pytest.mark.parametrize(
    ("parse", "body", "message"),
    [
        (rest.parse_stream_query, [], "the body must be a JSON object"),
        (rest.parse_stream_query, {"published": 1}, "published must be a boolean"),
        (rest.parse_stream_query, {"name": ""}, "name must be a non-empty string"),
        (rest.parse_stream_query, {"name": "a\nb"}, "name must not contain control characters"),
        (rest.parse_stream_query, {"display": "metrics"}, "display must be a list of strings"),
        (rest.parse_snapshot, {"name": "x"}, "streamName is required"),
        (rest.parse_stream_event, {"streamName": "x"}, "payload is required"),
        (rest.parse_stream_event, {"streamName": "x", "type": "snapshot", "payload": {}}, "type must be one of"),
        (rest.parse_data_send, {"payload": {}}, "sessionId is required"),
        (rest.parse_session_id, {"sessionId": 5}, "sessionId must be a non-empty string"),
    ],
)
def test_bad_bodies(parse, body, message: str) -> None:
    with pytest.raises(rest.RestError) as exc:
        parse(body)
    assert exc.value.status == 400 and message in exc.value.message


def test_stream_event_and_data_defaults() -> None:
    event = rest.parse_stream_event({"streamName": "s", "type": "audioMuted"})
    assert (event.type, event.payload) == ("audioMuted", None)
    assert rest.parse_stream_event({"streamName": "s", "payload": [1]}).type == "data"
    data = rest.parse_data_send({"sessionId": "/a/b", "payload": {"x": 1}})
    assert data.operation_id  # generated when the caller gives none


def test_connection_object_never_leaks_credentials() -> None:
    obj = rest.connection_object(app_key="app", session_id="/s", status="ESTABLISHED", create_date=1,
                                 connection={"authToken": "t", "sipPassword": "p", "sipLogin": "l",
                                             "clientVersion": "2.0", "custom": {"k": 1}},
                                 streams=["m"])
    assert obj == {"appKey": "app", "sessionId": "/s", "status": "ESTABLISHED", "createDate": 1,
                   "mediaSessionIds": ["m"], "clientVersion": "2.0", "custom": {"k": 1}}


def test_on_data_event_message() -> None:
    frame = json.loads(msg.on_data_event("/s", "op", {"a": 1}, "app"))
    assert frame == {"message": "OnDataEvent",
                     "data": [{"appKey": "app", "sessionId": "/s", "operationId": "op", "payload": {"a": 1}}]}


def test_log_values_and_lines() -> None:
    assert q("live-1") == "live-1" and q("/1.2.3.4:5/6.7.8.9:10/ab") == "/1.2.3.4:5/6.7.8.9:10/ab"
    assert q("Stopped by user") == '"Stopped by user"' and q("a=b") == '"a=b"' and q("") == '""'
    record = logging.LogRecord("webcall", logging.INFO, __file__, 1, "stream=%s", (q("x\ny"),), None)
    assert "\n" not in OneLineFormatter("%(message)s").format(record)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        record = logging.LogRecord("webcall", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = OneLineFormatter("%(message)s").format(record)
    assert "\n" not in line and "Traceback" in line and "ValueError: boom" in line


def test_rate_sampling_is_spread_over_slots_each_stream_once() -> None:
    """The sampler visits a slice of the streams per wake-up; over one interval every stream is sampled once."""
    from types import SimpleNamespace

    from webcall.wcs.sampler import SAMPLE_SLOTS, STREAMS_PER_SLOT

    n = SAMPLE_SLOTS * STREAMS_PER_SLOT  # enough streams for every slot
    settings = StreamSettings()
    hub = Hub(settings, MediaPlane(MediaPort(), None, settings, ()))  # type: ignore[arg-type]
    try:
        sampled: list[str] = []
        streams = [SimpleNamespace(media_session_id=f"id-{i}", label=f"s{i}",
                                   sample=lambda now, i=i: sampled.append(f"id-{i}")) for i in range(n)]
        class FakeSession:  # hashable, as sessions are
            pass

        session = FakeSession()
        session.streams = {s.media_session_id: s for s in streams}  # type: ignore[attr-defined]
        hub.sessions.add(session)  # type: ignore[arg-type]
        per_slot = []
        slices = hub.sampler.slices()
        assert len(slices) == SAMPLE_SLOTS
        for part in slices:
            before = len(sampled)
            hub.sampler.sample(1.0, part)
            per_slot.append(len(sampled) - before)
        assert sorted(sampled) == sorted(s.media_session_id for s in streams)  # each exactly once
        assert max(per_slot) < n // SAMPLE_SLOTS * 1.3  # no slot takes a big share
        hub.sampler.sample(2.0)  # no slot: everyone (REST and tests use this)
        assert len(sampled) == 2 * n
    finally:
        hub.snapshots.close()


def test_few_streams_are_sampled_in_one_wake_up_after_the_media_is_taken_in() -> None:
    """Eleven streams (a publisher and ten players): one slice, so the sampler wakes once per interval; each
    sample first brings the media counters up to date (the port takes in its ingest threads' queues)."""
    from types import SimpleNamespace

    from webcall.wcs.sampler import STREAMS_PER_SLOT, RateSampler

    events: list[str] = []
    streams = [SimpleNamespace(media_session_id=f"id-{i}", label=f"s{i}",
                               sample=lambda now, i=i: events.append(f"id-{i}")) for i in range(11)]
    sampler = RateSampler(1.0, lambda: streams, refresh=lambda: events.append("refresh"))
    assert len(sampler.slices()) == 1
    sampler.sample(1.0, sampler.slices()[0])
    assert events[0] == "refresh" and sorted(events[1:]) == sorted(s.media_session_id for s in streams)
    many = streams * 30  # 330: three slices
    sampler = RateSampler(1.0, lambda: many)
    assert len(sampler.slices()) == -(-len(many) // STREAMS_PER_SLOT)


def test_retiring_streams_are_let_go_without_a_metrics_scrape(monkeypatch) -> None:
    """With media workers an ended stream is kept RETIRE_AFTER seconds for its last counters; the queue used to
    be emptied only by /metrics, so a server nobody scraped kept every ended stream (and its session) forever."""
    import webcall.wcs.hub as hub_module

    class Ended:
        def counters(self) -> dict:
            return {("rtp_packets_received", "video"): 1}

    class Plane:
        retire_after = 2.0

    now = [100.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: now[0])
    hub = Hub(StreamSettings(), Plane())  # type: ignore[arg-type]
    for _ in range(1000):
        hub.retire(Ended())  # type: ignore[arg-type]
        now[0] += 0.1
    assert len(hub._retiring) <= 21  # the last 2 s of ended streams, not all 1000
    assert hub.totals()[("rtp_packets_received", "video")] == 1000  # every one counted, in transit or settled
