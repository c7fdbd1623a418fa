"""Tracing, owned by each service's lifecycle (no global provider).

Spans are recorded when `[tracing] endpoint` is set (exported over OTLP) or when
`tracing.ring_size` > 0 (the default: the last finished spans stay in a bounded ring in
memory, for `criplex trace`), or both. With neither, every helper returns a shared no-op
context manager, so tracing off costs one attribute check per call. The W3C `traceparent`
string travels in the nng envelope to join spans across processes.

Two recorders behind one interface:
- ring only (no endpoint, the default): spans are recorded here, without the OpenTelemetry
  SDK. A span is a small slotted object while it runs and a `FinishedSpan` tuple in the ring
  once it ends: ids from `random.getrandbits`, the parent from a context variable, sampling
  as the SDK's `ParentBased(TraceIdRatioBased)` decides it. The SDK path (sampler, span
  processors, locks, resource, context attach/detach, a `ReadableSpan` copy per span) cost
  ~19 µs a span against ~3 µs here, and kept objects alive for the garbage collector.
- endpoint set: the SDK records the spans (a collector wants them in full: kind, status,
  events, resource) and exports them; the ring gets each finished one as a `FinishedSpan`.

Either way the current span is this module's context variable, so `set_attribute`,
`record_error` and `traceparent` work the same whichever recorder is on, and a reload
(`Tracing.reconfigure`) can switch recorders in a running process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shared.config import TracingConfig
from shared.schema.common import SpansRequest, SpansResponse
from shared.span_ring import FinishedSpan, SpanRing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

_NOOP = contextlib.nullcontext()
_TRACE_ID_LIMIT = (1 << 64) - 1  # TraceIdRatioBased compares the trace ID's low 64 bits with the bound
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# OpenTelemetry's SpanKind values, for the SDK recorder.
SERVER, CLIENT, INTERNAL = "server", "client", "internal"


class _Live:
    """The span running in this context: what its children, tags and the traceparent need."""

    __slots__ = ("attributes", "error", "sampled", "sdk", "span_id", "trace_id")

    def __init__(self, trace_id: int, span_id: int, sampled: bool, sdk: Any = None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.attributes: dict[str, str] | None = None
        self.error = False
        self.sdk = sdk  # the SDK's span when the SDK records


# The current span of this task/thread. A context variable is per-context state, not shared
# mutable state: each asyncio task starts from a copy of its creator's context, as OTel's does.
_CURRENT: ContextVar[_Live | None] = ContextVar("criplex_current_span", default=None)


def _parse_traceparent(value: str) -> _Live | None:
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None
    return _Live(trace_id, span_id, bool(int(match[3], 16) & 1))


class _RingSpan:
    """A span recorded straight into the ring: no SDK in the way."""

    __slots__ = ("_live", "_name", "_parent", "_start", "_token", "_tracing")

    def __init__(self, tracing: Tracing, name: str, parent: _Live | None) -> None:
        self._tracing = tracing
        self._name = name
        self._parent = parent

    def __enter__(self) -> _Live:
        parent = self._parent or _CURRENT.get()
        if parent is None:
            trace_id = random.getrandbits(128) or 1
            live = _Live(trace_id, random.getrandbits(64) or 1, (trace_id & _TRACE_ID_LIMIT) < self._tracing.bound)
        else:
            live = _Live(parent.trace_id, random.getrandbits(64) or 1, parent.sampled)
        self._parent = parent
        self._live = live
        self._token: Token[_Live | None] = _CURRENT.set(live)
        self._start = time.time_ns()
        return live

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        end = time.time_ns()
        _reset(self._token)
        live = self._live
        ring = self._tracing.ring
        if not live.sampled or ring is None:
            return
        # As OTel's use_span: an Exception leaving the span marks it failed (not BaseException:
        # a cancelled task or GeneratorExit is no error).
        error = live.error or (exc_type is not None and issubclass(exc_type, Exception))
        ring.add(FinishedSpan(live.trace_id, live.span_id, self._parent.span_id if self._parent else 0,
                              self._name, self._start, end, error,
                              tuple(live.attributes.items()) if live.attributes else ()))


class _SdkSpan:
    """A span the OpenTelemetry SDK records (an endpoint is set); its parent is our current span."""

    __slots__ = ("_kind", "_name", "_parent", "_span", "_token", "_tracer")

    def __init__(self, tracer: Tracer, name: str, kind: str, parent: _Live | None) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._parent = parent

    def __enter__(self) -> _Live:
        from opentelemetry import trace

        parent = self._parent or _CURRENT.get()
        context = None
        if parent is not None:
            context = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                parent.trace_id, parent.span_id, is_remote=self._parent is not None,
                trace_flags=trace.TraceFlags(1 if parent.sampled else 0))))
        span = self._tracer.start_span(self._name, context=context, kind=trace.SpanKind[self._kind.upper()])
        sc = span.get_span_context()
        self._span = span
        live = _Live(sc.trace_id, sc.span_id, sc.trace_flags.sampled, span if span.is_recording() else None)
        self._token: Token[_Live | None] = _CURRENT.set(live)
        return live

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _reset(self._token)
        if exc is not None and isinstance(exc, Exception):
            _sdk_error(self._span, exc)
        self._span.end()


def _reset(token: Token[_Live | None]) -> None:
    # ValueError: the span ended in another context than it began in (an async generator's span).
    with contextlib.suppress(ValueError):
        _CURRENT.reset(token)


def _sdk_error(span: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class Tracing:
    """A service's tracer; `enabled` is False when spans go neither to a collector nor to the ring."""

    def __init__(self, service: str, config: TracingConfig) -> None:
        self.service = service
        self.config = config
        self.enabled = False
        self.exporting = False  # an endpoint is set: the SDK records, and the polled calls are traced too
        self.bound = 0
        self.ring: SpanRing | None = None
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._apply(config)

    def _apply(self, config: TracingConfig) -> None:
        if config.ring_size <= 0:
            self.ring = None
        elif self.ring is None:
            self.ring = SpanRing(self.service, config.ring_size)
        elif self.ring.size != config.ring_size:
            self.ring = self.ring.resized(config.ring_size)
        self.bound = round(config.sample_rate * (_TRACE_ID_LIMIT + 1))
        if config.endpoint and (self._provider is None or config.endpoint != self.config.endpoint
                                or config.sample_rate != self.config.sample_rate):
            # Imported here: the SDK costs start-up time and memory a ring-only process need not pay.
            from shared.otlp import exporting_provider, sdk_tracer

            self._retire_provider()
            self._provider = exporting_provider(self.service, config, self._to_ring)
            self._tracer = sdk_tracer(self._provider)
        elif not config.endpoint:
            self._retire_provider()
        self.config = config
        self.exporting = self._tracer is not None
        self.enabled = self.exporting or self.ring is not None

    def reconfigure(self, config: TracingConfig) -> None:
        """Take a reloaded `[tracing]`: ring on, off or resized (its newest spans kept), another
        endpoint or sample rate; spans open at that moment end in the recorder they began in."""
        if config != self.config:
            self._apply(config)

    def _retire_provider(self) -> None:
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is None:
            return
        # Shutting down flushes the exporter, which may wait on an unreachable collector: not on
        # the event loop. The loop's executor owns the work; asyncio.run waits for it at exit.
        try:
            asyncio.get_running_loop().run_in_executor(None, provider.shutdown)
        except RuntimeError:  # no loop: at exit, or from a test
            provider.shutdown()

    def _to_ring(self, span: FinishedSpan) -> None:
        ring = self.ring
        if ring is not None:
            ring.add(span)

    def _open(self, name: str, kind: str, parent: _Live | None) -> AbstractContextManager[object]:
        if self._tracer is not None:
            return _SdkSpan(self._tracer, name, kind, parent)
        return _RingSpan(self, name, parent)

    def server_span(self, name: str, traceparent: str = "") -> AbstractContextManager[object]:
        """A span for handling one call; a child of `traceparent` when the caller sent one."""
        if not self.enabled:
            return _NOOP
        return self._open(name, SERVER, _parse_traceparent(traceparent) if traceparent else None)

    def client_span(self, name: str) -> AbstractContextManager[object]:
        if not self.enabled:
            return _NOOP
        return self._open(name, CLIENT, None)

    def span(self, name: str) -> AbstractContextManager[object]:
        """A span for a sub-step of the current call (a CNI plugin, runc, a mount)."""
        if not self.enabled:
            return _NOOP
        return self._open(name, INTERNAL, None)

    def spans(self, request: SpansRequest) -> SpansResponse:
        """The finished spans the ring still holds that `request` asks for."""
        ring = self.ring
        if ring is None:
            return SpansResponse()
        return SpansResponse(ring.find(request))

    def traceparent(self) -> str:
        """The W3C traceparent of the current span, or "" when there is none."""
        if not self.enabled:
            return ""
        live = _CURRENT.get()
        if live is None:
            return ""
        return f"00-{live.trace_id:032x}-{live.span_id:016x}-{'01' if live.sampled else '00'}"

    def shutdown(self) -> None:
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is not None:
            provider.shutdown()
        if self.ring is not None:
            self.ring.clear()


def set_attribute(key: str, value: str) -> None:
    """Tag the current span; a no-op when tracing is off."""
    live = _CURRENT.get()
    if live is None or not live.sampled:
        return
    if live.sdk is not None:
        live.sdk.set_attribute(key, value)
    elif live.attributes is None:
        live.attributes = {key: value}
    else:
        live.attributes[key] = value


def record_error(exc: BaseException) -> None:
    """Mark the current span failed; a no-op when tracing is off."""
    live = _CURRENT.get()
    if live is None or not live.sampled:
        return
    live.error = True
    if live.sdk is not None:
        _sdk_error(live.sdk, exc)
