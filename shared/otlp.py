"""Spans for a collector: the OpenTelemetry SDK, used only when `[tracing] endpoint` is set.

Imported lazily by `shared.tracing`: the SDK (and the exporter's grpc channels) cost start-up
time and memory a ring-only process does not need. The SDK's spans go to the collector in
full (batched, over OTLP/gRPC); the ring, when there is one, gets each as a compact record.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode

from shared.config import TracingConfig
from shared.span_ring import FinishedSpan


class _ToRing(SpanProcessor):
    """Hands each finished SDK span to the process's ring as a `FinishedSpan`."""

    def __init__(self, add: Callable[[FinishedSpan], None]) -> None:
        self._add = add

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        self._add(FinishedSpan(
            context.trace_id, context.span_id, span.parent.span_id if span.parent is not None else 0, span.name,
            span.start_time or 0, span.end_time or 0, span.status.status_code is StatusCode.ERROR,
            tuple((k, str(v)) for k, v in (span.attributes or {}).items())))

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def exporting_provider(service: str, config: TracingConfig, ring: Callable[[FinishedSpan], None]) -> TracerProvider:
    """A provider that exports to `config.endpoint`, and hands every finished span to `ring`."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"criplex-{service}", "service.namespace": "criplex"}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_rate)),
    )
    provider.add_span_processor(_ToRing(ring))
    endpoint = config.endpoint
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")), schedule_delay_millis=200))
    return provider


def sdk_tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("criplex")
