"""Media-plane statistics that are not plain per-object counters: the sampled cost of a fan-out.

`TrackRouter.deliver()` times one fan-out in every `FANOUT_SAMPLE_EVERY` (the whole loop over its players
for one publisher packet: its duration with `time.perf_counter_ns`, and the CPU time the thread spent in it
with `time.thread_time_ns`) and hands both here. The CPU time is what `webcall bench` sets against the
compiled loop's cost of the same work. Nothing else on the forwarding path is timed: four clock reads per
64 packets is the whole cost.
"""

from __future__ import annotations

from bisect import bisect_left

FANOUT_SAMPLE_EVERY = 64  # a power of two: the producer tests `count & (N - 1)`
FANOUT_SAMPLE_MASK = FANOUT_SAMPLE_EVERY - 1

# Upper bounds, in seconds, of the histogram buckets (the last bucket, +Inf, is implicit).
FANOUT_BUCKETS = (5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3)
_BUCKETS_NS = tuple(round(b * 1e9) for b in FANOUT_BUCKETS)


class FanoutCost:
    """A histogram of sampled fan-out durations (one publisher packet to all of its players)."""

    __slots__ = ("counts", "sum_ns", "cpu_ns", "samples", "players")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS_NS) + 1)  # per bucket (not cumulative); the last is +Inf
        self.sum_ns = 0
        self.cpu_ns = 0  # the thread's CPU time in the same fan-outs (sum_ns less time the thread did not run)
        self.samples = 0
        self.players = 0  # players covered by the sampled fan-outs: sum_ns / players = cost per player

    def observe(self, duration_ns: int, players: int, cpu_ns: int = 0) -> None:
        self.counts[bisect_left(_BUCKETS_NS, duration_ns)] += 1
        self.sum_ns += duration_ns
        self.cpu_ns += cpu_ns
        self.samples += 1
        self.players += players

    def observe_many(self, samples: int, duration_ns: int, players: int, cpu_ns: int) -> None:
        """`samples` fan-outs timed elsewhere (an ingest thread, which sums them): counted in the bucket of
        their mean duration."""
        self.counts[bisect_left(_BUCKETS_NS, duration_ns // samples)] += samples
        self.sum_ns += duration_ns
        self.cpu_ns += cpu_ns
        self.samples += samples
        self.players += players

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound in seconds, cumulative count) per bucket, ending with (inf, samples)."""
        out, total = [], 0
        for bound, count in zip((*FANOUT_BUCKETS, float("inf")), self.counts):
            total += count
            out.append((bound, total))
        return out
