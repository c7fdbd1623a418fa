"""The last finished spans of a process, kept in memory for `criplex trace` (no collector needed).

An OpenTelemetry span processor: `on_end` appends to a bounded deque (one C call, no lock:
the deque is safe to append from any thread), and a query copies it and filters. Spans are
converted to wire records only when asked for, so recording stays cheap.
"""

from __future__ import annotations

from collections import deque

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from shared.schema.common import SpanRecord, SpansRequest


class SpanRing(SpanProcessor):
    def __init__(self, service: str, size: int) -> None:
        self.service = service
        self._spans: deque[ReadableSpan] = deque(maxlen=size)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._spans.append(span)

    def shutdown(self) -> None:
        self._spans.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def find(self, request: SpansRequest) -> tuple[SpanRecord, ...]:
        """The spans of `request.trace_ids`, plus those whose `request.attribute` is one of `request.values`."""
        wanted = {int(t, 16) for t in request.trace_ids}
        values = frozenset(request.values)
        key = request.attribute
        found = []
        # list() of a deque runs in C without releasing the GIL: a consistent copy.
        for span in list(self._spans):
            context = span.context
            if context is None:
                continue
            attributes = span.attributes or {}
            if context.trace_id in wanted or (key and str(attributes.get(key, "")) in values and key in attributes):
                found.append(self._record(span))
        return tuple(found)

    def _record(self, span: ReadableSpan) -> SpanRecord:
        context = span.context
        assert context is not None
        return SpanRecord(
            trace_id=format(context.trace_id, "032x"),
            span_id=format(context.span_id, "016x"),
            parent_id=format(span.parent.span_id, "016x") if span.parent is not None else "",
            name=span.name,
            service=self.service,
            start_ns=span.start_time or 0,
            end_ns=span.end_time or 0,
            error=span.status.status_code is StatusCode.ERROR,
            attributes={k: str(v) for k, v in (span.attributes or {}).items()},
        )
