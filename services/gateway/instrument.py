"""The one wrapper every CRI method goes through: span, log line, metrics, error → gRPC status.

Handlers raise `shared.errors` types and never touch gRPC status codes themselves;
this module is the only place that maps one to the other.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from shared.errors import Code, CriplexError, InvalidArgument
from shared.tracing import record_error, set_attribute

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = logging.getLogger("criplex.gateway.cri")

GRPC_STATUS: dict[Code, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.name) for code in Code}
# Undecodable requests are logged at most this often: a broken client must not flood the log.
_UNDECODABLE_LOG_INTERVAL_S = 1.0
_NOOP = contextlib.nullcontext()


@dataclass(frozen=True)
class Call:
    """What a handler knows about the CRI call it serves."""

    method: str
    timeout: float  # seconds left of the kubelet's deadline (or the configured default)
    has_deadline: bool  # False: the client set none (the kubelet sets none on PullImage)


@dataclass(frozen=True)
class Serialized:
    """A response already serialized (from a cache): sent as it is."""

    data: bytes


def serializer(cls: Any) -> Callable[[Any], bytes]:
    def serialize(response: Any) -> bytes:
        if type(response) is Serialized:
            return response.data
        return cls.SerializeToString(response)  # type: ignore[no-any-return]

    return serialize


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the method's message."""

    type_name: str
    error: str


Handler = Callable[["Gateway", Any, Call], Awaitable[Any]]
StreamHandler = Callable[["Gateway", Any, Call], AsyncIterator[Any]]
GrpcHandler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
GrpcStreamHandler = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def tolerant_deserializer(cls: Any) -> Callable[[bytes], Any]:
    """gRPC answers UNKNOWN when a deserializer raises; we want INVALID_ARGUMENT, said once."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:
            return Undecodable(cls.DESCRIPTOR.name, str(exc) or type(exc).__name__)

    return parse


class _Throttle:
    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self._interval
        return True


def _call(method: str, default_timeout: float, context: grpc.aio.ServicerContext) -> Call:
    remaining = context.time_remaining()
    return Call(method, default_timeout if remaining is None else max(remaining, 0.0), remaining is not None)


def _traceparent(gateway: Gateway, context: grpc.aio.ServicerContext) -> str:
    if gateway.tracing.enabled:
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                return str(value)
    return ""


class _Outcome:
    """Maps what a handler raised to a gRPC status; the one place that does."""

    def __init__(self, method: str, throttle: _Throttle) -> None:
        self._method = method
        self._throttle = throttle

    def check(self, request: Any) -> None:
        if isinstance(request, Undecodable):
            if self._throttle.allow():
                log.info("%s: undecodable %s request (%s); %d more suppressed", self._method,
                         request.type_name, request.error, self._throttle.suppressed)
                self._throttle.suppressed = 0
            raise InvalidArgument(f"{self._method}: the request is not a valid {request.type_name} message")

    async def fail(self, exc: BaseException, context: grpc.aio.ServicerContext) -> None:
        record_error(exc)
        if isinstance(exc, CriplexError):
            if not (exc.code is Code.INVALID_ARGUMENT and "not a valid" in exc.message):
                log.log(logging.WARNING if exc.code is Code.INTERNAL else logging.INFO,
                        "%s failed (%s): %s", self._method, exc.code.name, exc.message)
            await context.abort(GRPC_STATUS[exc.code], exc.message)
        log.exception("%s failed unexpectedly", self._method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"{self._method}: {type(exc).__name__}: {exc}")


def _tag_span(message: Any) -> None:
    """Name the pod and container a call is about on its span, so `criplex trace pod` finds it."""
    sandbox_id = getattr(message, "pod_sandbox_id", None)
    if sandbox_id:
        set_attribute("criplex.pod_sandbox_id", sandbox_id)
    container_id = getattr(message, "container_id", None)
    if container_id:
        set_attribute("criplex.container_id", container_id)


# What the kubelet asks every second or so, and no pod start is made of. With only the span
# ring on (no collector), these get no span: they would push a pod start's spans out of the
# ring within minutes, and they are the calls whose cost is most of a throughput figure.
_POLLED = frozenset({
    "Version", "Status", "RuntimeConfig", "ListPodSandbox", "ListContainers", "PodSandboxStatus",
    "ContainerStatus", "ListImages", "ImageStatus", "ImageFsInfo", "ContainerStats", "ListContainerStats",
    "PodSandboxStats", "ListPodSandboxStats",
})
# The calls of a pod start, which pulls yield to while they run.
_POD_STARTS = frozenset({"RunPodSandbox", "CreateContainer", "StartContainer"})


def _error_label(exc: BaseException) -> str:
    return exc.code.name if isinstance(exc, CriplexError) else "INTERNAL"


def instrument(gateway: Gateway, method: str, handler: Handler) -> GrpcHandler:
    tracing = gateway.tracing
    polled = method in _POLLED
    default_timeout = gateway.config.gateway.default_timeout
    span_name = f"runtime.v1/{method}"
    outcome = _Outcome(method, _Throttle(_UNDECODABLE_LOG_INTERVAL_S))

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if method in _POD_STARTS:
            with gateway.pod_starts.starting():  # pulls step aside meanwhile (shared/pod_starts.py)
                return await serve_call(request, context)
        return await serve_call(request, context)

    async def serve_call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        call = _call(method, default_timeout, context)
        # Read per call, not once: a reload turns tracing and metrics on and off.
        tag = tracing.enabled and (tracing.exporting or not polled)
        metrics = gateway.cri_metrics  # None when [metrics] enable is false
        with tracing.server_span(span_name, _traceparent(gateway, context)) if tag else _NOOP:
            try:
                outcome.check(request)
                if tag:
                    _tag_span(request)
                response = await handler(gateway, request, call)
                if tag:
                    _tag_span(response)
            except Exception as exc:
                if metrics is not None:
                    metrics.observe(method, time.perf_counter() - started, _error_label(exc))
                await outcome.fail(exc, context)
        if metrics is not None:
            metrics.observe(method, time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s ok in %.2f ms", method, (time.perf_counter() - started) * 1000)
        return response

    return serve


def instrument_stream(gateway: Gateway, method: str, handler: StreamHandler) -> GrpcStreamHandler:
    tracing = gateway.tracing
    default_timeout = gateway.config.gateway.default_timeout
    outcome = _Outcome(method, _Throttle(_UNDECODABLE_LOG_INTERVAL_S))

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        call = _call(method, default_timeout, context)
        with tracing.server_span(f"runtime.v1/{method}", _traceparent(gateway, context)):
            try:
                outcome.check(request)
                async for item in handler(gateway, request, call):
                    yield item
            except Exception as exc:
                await outcome.fail(exc, context)

    return serve
