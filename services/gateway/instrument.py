"""The one wrapper every CRI method goes through: span, log line, error → gRPC status.

Handlers raise `shared.errors` types and never touch gRPC status codes themselves;
this module is the only place that maps one to the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from shared.errors import Code, CriplexError
from shared.tracing import record_error

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = logging.getLogger("criplex.gateway.cri")

GRPC_STATUS: dict[Code, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.name) for code in Code}


@dataclass(frozen=True)
class Call:
    """What a handler knows about the CRI call it serves."""

    method: str
    timeout: float  # seconds left of the kubelet's deadline (or the configured default)
    has_deadline: bool  # False: the client set none (the kubelet sets none on PullImage)


Handler = Callable[["Gateway", Any, Call], Awaitable[Any]]
GrpcHandler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def instrument(gateway: Gateway, method: str, handler: Handler) -> GrpcHandler:
    tracing = gateway.tracing
    default_timeout = gateway.config.gateway.default_timeout
    span_name = f"runtime.v1/{method}"

    async def serve(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        remaining = context.time_remaining()
        call = Call(method, default_timeout if remaining is None else max(remaining, 0.0), remaining is not None)
        traceparent = ""
        if tracing.enabled:
            for key, value in context.invocation_metadata() or ():
                if key == "traceparent":
                    traceparent = value
        with tracing.server_span(span_name, traceparent):
            try:
                response = await handler(gateway, request, call)
            except CriplexError as exc:
                record_error(exc)
                log.log(logging.WARNING if exc.code is Code.INTERNAL else logging.INFO,
                        "%s failed (%s): %s", method, exc.code.name, exc.message)
                await context.abort(GRPC_STATUS[exc.code], exc.message)
            except Exception as exc:
                record_error(exc)
                log.exception("%s failed unexpectedly", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{method}: {type(exc).__name__}: {exc}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s ok in %.2f ms", method, (time.perf_counter() - started) * 1000)
        return response

    return serve
