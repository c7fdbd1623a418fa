"""Messages every daemon serves, whatever its domain."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.wire import Method

STARTED_TOPIC = "daemon.started"


@dataclass(frozen=True)
class HealthRequest:
    pass


@dataclass(frozen=True)
class Health:
    """A daemon's own view of whether it can do its job."""

    service: str
    pid: int
    started_at: float
    ready: bool
    reason: str = ""  # CamelCase, as CRI condition reasons are
    message: str = ""
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Started:
    """Published once when a daemon starts serving: subscribers resynchronise on it."""

    service: str
    pid: int
    started_at: float


HEALTH = Method("health", HealthRequest, Health)


# -- observability: metrics and spans every daemon reports --------------------------------------


@dataclass(frozen=True)
class MetricsRequest:
    pass


@dataclass(frozen=True)
class LabeledValue:
    """One sample of a labeled series, e.g. containers_oom_count_total{name="web"}."""

    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class MetricsReport:
    """A daemon's figures at this moment; names are unprefixed (the gateway adds the prefix).

    A name ending in `_total` is a counter, any other a gauge."""

    values: dict[str, float] = field(default_factory=dict)
    series: tuple[LabeledValue, ...] = ()


@dataclass(frozen=True)
class SpansRequest:
    """Finished spans from the process's ring: of these traces, or whose `attribute` is one of `values`."""

    trace_ids: tuple[str, ...] = ()
    attribute: str = ""
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_id: str  # "" for a root
    name: str
    service: str
    start_ns: int  # unix nanoseconds
    end_ns: int
    error: bool = False
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpansResponse:
    spans: tuple[SpanRecord, ...] = ()


METRICS = Method("metrics", MetricsRequest, MetricsReport)
SPANS = Method("spans", SpansRequest, SpansResponse)
