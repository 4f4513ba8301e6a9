"""Production guardrails: the configured limits, the refusal counters and a token bucket, in no protocol's terms.

Each limit has a name (the `limit` label of `webcall_refusals_total` in /metrics); a refusal is counted under it
by whoever enforced it: the WCS session and hub (signalling limits), the media port (unverified datagrams, DTLS
handshakes in progress: per media process, so per worker with --workers 2+) and the publisher endpoint (the
bitrate ceiling). 0 turns a count limit off.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

# The `limit` label values, in the order /metrics lists them.
SESSIONS_PER_IP = "sessions_per_ip"
STREAMS_PER_SESSION = "streams_per_session"
PLAYERS_PER_STREAM = "players_per_stream"
PUBLISHERS = "publishers"
MESSAGES_PER_SECOND = "messages_per_second"
UNVERIFIED_DATAGRAMS = "unverified_datagrams"
DTLS_HANDSHAKES = "dtls_handshakes"
PUBLISHER_BITRATE = "publisher_bitrate"
SHUTDOWN = "shutdown"  # a new session while the server is stopping
LIMIT_NAMES = (SESSIONS_PER_IP, STREAMS_PER_SESSION, PLAYERS_PER_STREAM, PUBLISHERS, MESSAGES_PER_SECOND,
               UNVERIFIED_DATAGRAMS, DTLS_HANDSHAKES, PUBLISHER_BITRATE, SHUTDOWN)


@dataclass
class Limits:
    """The signalling limits (the media plane's are in its own settings). 0 = no limit."""

    sessions_per_ip: int = 100
    streams_per_session: int = 50
    players_per_stream: int = 1000
    publishers: int = 100
    messages_per_second: float = 50.0


class Refusals(Counter[str]):
    """How many times each limit refused something (a Counter by limit name)."""


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved: `take()` is False when the bucket is empty."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
