"""OpenTelemetry tracing, owned by each service's lifecycle (no global provider).

Spans are recorded when `[tracing] endpoint` is set (exported over OTLP) or when
`tracing.ring_size` > 0 (the default: the last finished spans stay in a bounded ring
in memory, for `criplex trace`), or both. With neither, every helper returns a shared
no-op context manager, so tracing off costs one attribute check per call. The W3C
`traceparent` string travels in the nng envelope to join spans across processes.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.config import TracingConfig
from shared.schema.common import SpansRequest, SpansResponse

_NOOP = contextlib.nullcontext()
_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """A service's tracer; `enabled` is False when spans go neither to a collector nor to the ring."""

    def __init__(self, service: str, config: TracingConfig) -> None:
        self.enabled = bool(config.endpoint) or config.ring_size > 0
        self._provider = None
        self._tracer: trace.Tracer | None = None
        self._ring = None
        if not self.enabled:
            return
        # Imported lazily: the SDK (and the exporter's grpc channels) cost start-up time we do
        # not want when tracing is off.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from shared.span_ring import SpanRing

        provider = TracerProvider(
            resource=Resource.create({"service.name": f"criplex-{service}", "service.namespace": "criplex"}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_rate)),
        )
        if config.ring_size > 0:
            self._ring = SpanRing(service, config.ring_size)
            provider.add_span_processor(self._ring)
        if config.endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            endpoint = config.endpoint
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")),
                                   schedule_delay_millis=200)
            )
        self._provider = provider
        self._tracer = provider.get_tracer("criplex")

    def server_span(self, name: str, traceparent: str = "") -> AbstractContextManager[object]:
        """A span for handling one call; a child of `traceparent` when the caller sent one."""
        if self._tracer is None:
            return _NOOP
        ctx = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        return self._tracer.start_as_current_span(name, context=ctx, kind=trace.SpanKind.SERVER)

    def client_span(self, name: str) -> AbstractContextManager[object]:
        if self._tracer is None:
            return _NOOP
        return self._tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT)

    def span(self, name: str) -> AbstractContextManager[object]:
        """A span for a sub-step of the current call (a CNI plugin, runc, a mount)."""
        if self._tracer is None:
            return _NOOP
        return self._tracer.start_as_current_span(name, kind=trace.SpanKind.INTERNAL)

    def spans(self, request: SpansRequest) -> SpansResponse:
        """The finished spans the ring still holds that `request` asks for."""
        if self._ring is None:
            return SpansResponse()
        return SpansResponse(self._ring.find(request))

    def traceparent(self) -> str:
        """The W3C traceparent of the current span, or "" when there is none."""
        if self._tracer is None:
            return ""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent", "")

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def set_attribute(key: str, value: str) -> None:
    """Tag the current span; a no-op when tracing is off."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)


def record_error(exc: BaseException) -> None:
    """Mark the current span failed; a no-op when tracing is off."""
    span = trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
