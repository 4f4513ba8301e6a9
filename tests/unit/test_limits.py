"""The guardrails' pieces without a server: the token bucket, the option checks, the port's per-address budget."""

from __future__ import annotations

import dataclasses

import pytest

from webcall.media.port import MediaPort
from webcall.server.config import Config
from webcall.limits import DTLS_HANDSHAKES, UNVERIFIED_DATAGRAMS, TokenBucket


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=5.0, burst=10.0)
    start = bucket.stamp
    assert sum(bucket.take(start) for _ in range(20)) == 10
    assert not bucket.take(start + 0.1)  # half a token
    assert bucket.take(start + 0.25) and not bucket.take(start + 0.25)
    assert sum(bucket.take(start + 100.0) for _ in range(20)) == 10  # never more than the burst saved


def test_limits_validate() -> None:
    Config().validate()
    assert Config().publisher_bitrate_ceiling == int(1.5 * Config().max_bitrate)
    assert dataclasses.replace(Config(), bitrate_ceiling=1000).publisher_bitrate_ceiling == 1000
    for name, bad in (("max_publishers", -1), ("rtp_activity_timeout", 0.0), ("shutdown_timeout", -1.0),
                      ("bitrate_grace", 0.0), ("max_messages_per_second", -1.0)):
        with pytest.raises(ValueError):
            dataclasses.replace(Config(), **{name: bad}).validate()


def test_port_budget_per_unverified_address_and_handshake_cap() -> None:
    port = MediaPort(max_unverified=3, max_handshakes=1)
    a, b = ("192.0.2.1", 5000), ("192.0.2.2", 5000)
    assert [port._admit_unverified(a) for _ in range(5)] == [True, True, True, False, False]
    assert port._admit_unverified(b)  # another address has its own budget
    assert port.refusals[UNVERIFIED_DATAGRAMS] == 2
    first, second = object(), object()
    assert port.handshake_started(first) and not port.handshake_started(second)  # type: ignore[arg-type]
    port.handshake_done(first)  # type: ignore[arg-type]
    assert port.handshake_started(second)  # type: ignore[arg-type]
    assert port.refusals[DTLS_HANDSHAKES] == 1
