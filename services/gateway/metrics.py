"""The gateway's Prometheus endpoint: CRI-O's metric set, and what only a split runtime has.

Nothing is kept in prometheus_client's own metric objects: the gateway records into plain
counters and `Histogram`s on its event loop (no locks), and a custom collector builds the
families at scrape time. The scrape runs in prometheus_client's HTTP thread; it hands one
coroutine to the loop that copies the gateway's figures and asks every daemon for its own
(METRICS, on the control lane, with a short timeout), so a daemon that is down or stuck
shows `daemon_up 0` and never holds up or breaks the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from shared.config import MetricsConfig
from shared.errors import CriplexError
from shared.histogram import Histogram
from shared.schema.common import METRICS, LabeledValue, MetricsReport, MetricsRequest

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from services.gateway.app import Gateway

log = logging.getLogger(__name__)

PREFIX = "container_runtime_criplex_"
# A daemon's figures must come back within this, or it counts as down for this scrape.
DAEMON_TIMEOUT_S = 0.5
# The whole scrape's wait on the event loop: the daemons' answers, in parallel, plus a margin.
_SCRAPE_TIMEOUT_S = DAEMON_TIMEOUT_S + 1.5


class CriMetrics:
    """Counts, latencies and errors of CRI calls, recorded by `instrument` on the event loop."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.errors: dict[tuple[str, str], int] = {}

    def observe(self, operation: str, seconds: float, error: str = "") -> None:
        histogram = self.latency.get(operation)
        if histogram is None:
            histogram = self.latency[operation] = Histogram()
        histogram.observe(seconds)
        if error:
            key = (operation, error)
            self.errors[key] = self.errors.get(key, 0) + 1


@dataclass(frozen=True)
class DaemonFigures:
    daemon: str
    up: bool
    restarts: int
    inflight: int
    hops: dict[str, Histogram]
    report: MetricsReport


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows, copied on the event loop."""

    latency: dict[str, Histogram]
    errors: dict[tuple[str, str], int]
    view_resyncs: int
    daemons: list[DaemonFigures] = field(default_factory=list)


async def snapshot(gateway: Gateway, cri: CriMetrics) -> Snapshot:
    reports = await asyncio.gather(*(_report(gateway, name) for name in gateway.clients))
    daemons = []
    for (name, client), report in zip(gateway.clients.items(), reports, strict=True):
        daemons.append(DaemonFigures(
            daemon=name, up=report is not None, restarts=gateway.health.state(name).restarts, inflight=client.inflight,
            hops={method: h.copy() for method, h in (client.hops or {}).items()},
            report=report or MetricsReport()))
    return Snapshot({op: h.copy() for op, h in cri.latency.items()}, dict(cri.errors),
                    gateway.view.relists, daemons)


async def _report(gateway: Gateway, daemon: str) -> MetricsReport | None:
    try:
        return await gateway.clients[daemon].call(METRICS, MetricsRequest(), timeout=DAEMON_TIMEOUT_S)
    except CriplexError:
        return None


def families(snap: Snapshot) -> Iterator[Metric]:
    """The exposition of one snapshot (pure: no I/O)."""
    ops = CounterMetricFamily(PREFIX + "operations_total", "CRI calls served, by method.", labels=["operation"])
    latency = HistogramMetricFamily(PREFIX + "operations_latency_seconds", "Latency of CRI calls, by method.",
                                    labels=["operation"])
    for operation, histogram in sorted(snap.latency.items()):
        ops.add_metric([operation], sum(histogram.counts))
        latency.add_metric([operation], histogram.cumulative(), histogram.sum)
    errors = CounterMetricFamily(PREFIX + "operations_errors_total", "CRI calls that failed, by method and code.",
                                 labels=["operation", "error"])
    for (operation, error), count in sorted(snap.errors.items()):
        errors.add_metric([operation, error], count)
    yield from (ops, latency, errors)
    yield from _daemon_families(snap.daemons)
    yield CounterMetricFamily(PREFIX + "view_resyncs_total",
                              "Relists of the gateway's pod/container view from monitord.", value=snap.view_resyncs)
    yield from _reported_families(snap.daemons)


def _daemon_families(daemons: list[DaemonFigures]) -> Iterator[Metric]:
    up = GaugeMetricFamily(PREFIX + "daemon_up", "1 when the daemon answered this scrape.", labels=["daemon"])
    restarts = CounterMetricFamily(PREFIX + "daemon_restarts_total",
                                   "Restarts of the daemon seen by the gateway since it started.", labels=["daemon"])
    inflight = GaugeMetricFamily(PREFIX + "daemon_inflight_requests", "nng calls from the gateway awaiting an answer.",
                                 labels=["daemon"])
    hops = HistogramMetricFamily(PREFIX + "nng_hop_seconds", "Round trip of a gateway -> daemon nng call.",
                                 labels=["daemon", "method"])
    for figures in daemons:
        up.add_metric([figures.daemon], 1.0 if figures.up else 0.0)
        restarts.add_metric([figures.daemon], figures.restarts)
        inflight.add_metric([figures.daemon], figures.inflight)
        for method, histogram in sorted(figures.hops.items()):
            hops.add_metric([figures.daemon, method], histogram.cumulative(), histogram.sum)
    yield from (up, restarts, inflight, hops)


# What the daemons report, and how to expose it; a name a daemon does not report reads 0.
_REPORTED: dict[str, str] = {
    "image_pulls_bytes_total": "Bytes of image blobs downloaded.",
    "image_pulls_success_total": "Image pulls that succeeded.",
    "image_layer_reuse_total": "Layers a pull found already in the store.",
    "containers_oom_total": "Containers killed by the OOM killer.",
    "processes_defunct": "Defunct (zombie) processes on the node.",
}
_REPORTED_SERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "image_pulls_failure_total": ("Image pulls that failed, by error.", ("error",)),
    "containers_oom_count_total": ("OOM kills, by container name.", ("name",)),
}


def _reported_families(daemons: list[DaemonFigures]) -> Iterator[Metric]:
    values: dict[str, float] = dict.fromkeys(_REPORTED, 0.0)
    series: dict[str, list[LabeledValue]] = {name: [] for name in _REPORTED_SERIES}
    for figures in daemons:
        for name, value in figures.report.values.items():
            values[name] = values.get(name, 0.0) + value
        for sample in figures.report.series:
            series.setdefault(sample.name, []).append(sample)
    for name, value in sorted(values.items()):
        doc = _REPORTED.get(name, "Reported by a daemon.")
        if name.endswith("_total"):
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
        else:
            yield GaugeMetricFamily(PREFIX + name, doc, value=value)
    for name, samples in sorted(series.items()):
        doc, known_labels = _REPORTED_SERIES.get(name, ("Reported by a daemon.", ()))
        labels = list(known_labels) or sorted({k for s in samples for k in s.labels})
        family = (CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily)(PREFIX + name, doc,
                                                                                        labels=labels)
        for sample in samples:
            family.add_metric([sample.labels.get(label, "") for label in labels], sample.value)
        yield family


class _ScrapeCollector(Collector):
    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop) -> None:
        self._gateway = gateway
        self._loop = loop

    def collect(self) -> Iterator[Metric]:
        # Runs in prometheus_client's HTTP thread: the figures are copied on the loop.
        future = asyncio.run_coroutine_threadsafe(snapshot(self._gateway, self._gateway.cri_metrics or CriMetrics()),
                                                  self._loop)
        try:
            snap = future.result(_SCRAPE_TIMEOUT_S)
        except Exception as exc:
            future.cancel()
            log.warning("metrics scrape failed: %r", exc)
            return
        yield from families(snap)


class MetricsEndpoint:
    """`/metrics` on `[metrics] address:port` while `[metrics] enable`; a reload moves or closes it."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._server: object | None = None
        self.serving: tuple[str, int] | None = None

    async def apply(self, config: MetricsConfig) -> None:
        """Serve as `config` says: start, stop, or move to another address or port."""
        wanted = (config.address, config.port) if config.enable else None
        if wanted == self.serving:
            return
        if self._server is not None:
            # Off the loop: a scrape in progress waits on the loop, and shutdown waits on it.
            await asyncio.to_thread(self.stop)
        if wanted is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_ScrapeCollector(self._gateway, asyncio.get_running_loop()))
            self._server, _thread = start_http_server(config.port, config.address, registry)
            self.serving = wanted
            log.info("serving Prometheus metrics on http://%s:%d/metrics", config.address, config.port)

    def stop(self) -> None:
        server, self._server, serving, self.serving = self._server, None, self.serving, None
        if server is not None:
            with contextlib.suppress(Exception):
                server.shutdown()  # type: ignore[attr-defined]
                server.server_close()  # type: ignore[attr-defined]
            log.info("stopped serving Prometheus metrics on %s:%d", *(serving or ("?", 0)))
