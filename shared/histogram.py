"""A latency histogram cheap enough to record on every call: no lock, no allocation.

Recording is one bisect over fixed bounds and two additions. Everything that records runs on
one event loop thread; the Prometheus collector copies the figures on that same thread.
"""

from __future__ import annotations

from bisect import bisect_left

# Seconds; from an nng hop (tens of µs) to a slow pull.
LATENCY_BOUNDS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (upper bound, observations <= it), ending with +Inf."""
        out = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out

    def copy(self) -> Histogram:
        clone = Histogram(self.bounds)
        clone.counts = list(self.counts)
        clone.sum = self.sum
        return clone
