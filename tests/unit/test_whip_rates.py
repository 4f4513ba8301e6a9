"""WHIP and WHEP streams' rates (REST /stream/find metrics) on media workers: taken between the workers' counter
reports, as the WCS streams' are.

A worker reports its counters once per rate interval, and the control process samples on its own phase. A
sample that finds the report it already used must keep the baseline: taken as a new reading, it would show a
rate of 0 for that interval and twice the rate for the next. The WHEP rates did that (a full suite on two
workers saw `VIDEO_RATE: 0` next to `VIDEO_FPS: 28`) until their readings carried the report's time.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from webcall.protocol.sdp import Codec
from webcall.whip.resources import WhepPlayback, WhipPublication
from webcall.wcs.rates import RateMeter
from webcall.workers.control import ConsumerView, ProducerView

VP8 = Codec("VP8", 96, 90000, None, "", ("nack", "nack pli"), None)


def _resource(cls, endpoint, status: str):
    resource = object.__new__(cls)  # only what sampling reads: its endpoint, meter and status
    resource.endpoint, resource.meter, resource.status = endpoint, RateMeter(), status
    return resource


@pytest.mark.parametrize("kind", ["whip", "whep"])
def test_a_sample_between_two_reports_keeps_the_rate(kind: str) -> None:
    producer = ProducerView("video", VP8)
    consumer = ConsumerView("video", "0", (1234, None), producer)
    if kind == "whip":
        resource = _resource(WhipPublication, SimpleNamespace(producers={"video": producer}), "PUBLISHING")

        def report(octets: int, frames: int, at: float) -> None:
            producer.update([octets // 1000, octets, frames, 1, 0, 0, 0, 0, 640, 480], at)
    else:
        resource = _resource(WhepPlayback, SimpleNamespace(consumers=[consumer]), "PLAYING")

        def report(octets: int, frames: int, at: float) -> None:
            producer.update([0, 0, frames, 1, 0, 0, 0, 0, 640, 480], at)
            consumer.update([octets // 1000, octets, 0, 0, 0, 0, 0], at)

    report(0, 0, at=10.0)
    resource.sample(10.05)
    report(125_000, 30, at=11.0)
    resource.sample(11.02)
    assert (resource.meter.latest.video_rate, resource.meter.latest.fps) == (1_000_000, 30)
    resource.sample(11.98)  # the worker's next report is a little late: the same report again
    assert (resource.meter.latest.video_rate, resource.meter.latest.fps) == (1_000_000, 30)
    report(250_000, 60, at=12.0)
    resource.sample(12.04)
    assert resource.meter.latest.video_rate == 1_000_000 and resource.meter.latest.interval == 1.0
