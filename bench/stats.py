"""Latency/throughput summaries shared by the benchmarks."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    name: str
    concurrency: int
    calls: int
    p50_us: float
    p99_us: float
    per_second: float

    def row(self) -> str:
        return (f"| {self.name} | {self.concurrency} | {self.calls} | {self.p50_us:,.0f} | {self.p99_us:,.0f} "
                f"| {self.per_second:,.0f} |")


HEADER = "| what | concurrency | calls | p50 µs | p99 µs | calls/s |\n|---|---|---|---|---|---|"


def summarize(name: str, concurrency: int, latencies_s: list[float], wall_s: float) -> Summary:
    ordered = sorted(latencies_s)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Summary(name, concurrency, len(ordered), statistics.median(ordered) * 1e6, p99 * 1e6,
                   len(ordered) / wall_s)
