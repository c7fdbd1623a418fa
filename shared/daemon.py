"""The process shell every criplex daemon shares: config, logging, tracing, serving, signals.

A daemon provides a `Service`: it registers its methods, runs its background work
for as long as the process lives (inside the daemon's task group, so SIGTERM
cancels it), and reports its own health.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from shared.config import Config, load_config
from shared.errors import ConfigError
from shared.reload import reload_config
from shared.schema.common import (
    HEALTH,
    METRICS,
    SPANS,
    STARTED_TOPIC,
    Health,
    HealthRequest,
    MetricsReport,
    MetricsRequest,
    SpansRequest,
    SpansResponse,
    Started,
)
from shared.tracing import Tracing
from shared.transport import DaemonServer, EventPublisher

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class DaemonContext:
    service: str
    config: Config
    tracing: Tracing
    events: EventPublisher
    state_dir: Path
    started_at: float


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    message: str = ""
    info: dict[str, str] | None = None


class Service(Protocol):
    def register(self, server: DaemonServer) -> None: ...

    async def run(self) -> None:
        """Background work; returns when the service has none, is cancelled at shutdown."""

    def readiness(self) -> Readiness: ...

    # Optional: `def metrics(self) -> MetricsReport`, the service's own figures for the gateway's
    # /metrics (see `serve_observability`); a service without it reports none.

    def on_reload(self, config: Config) -> None:
        """SIGHUP: take the live keys of a re-read configuration (shared/reload.py). Optional:
        the shell calls it only on services that define it; the log level is the shell's."""


def when_ready(ready: asyncio.Event, handler: Callable[[Req], Awaitable[Resp]]) -> Callable[[Req], Awaitable[Resp]]:
    """`handler`, but calls that arrive while the daemon loads and recovers its state wait for
    that (within their deadline): the gateway and the other daemons start at the same time,
    and an answer from records recovery is about to correct would be stale."""

    async def wrapped(request: Req) -> Resp:
        await ready.wait()
        return await handler(request)

    return wrapped


def setup_logging(service: str, level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s {service}[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def parse_config(argv: list[str] | None, prog: str) -> Config:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", default=os.environ.get("CRIPLEX_CONFIG") or None,
                        help="extra TOML file applied after /etc/criplex (env CRIPLEX_CONFIG)")
    args = parser.parse_args(argv)
    return load_config(args.config)


def main(service: str, factory: Callable[[DaemonContext], Service], argv: list[str] | None = None) -> int:
    try:
        config = parse_config(argv, f"criplex-{service}")
    except ConfigError as exc:
        print(f"criplex-{service}: configuration error: {exc.message}", file=sys.stderr)
        return 2
    setup_logging(service, config.log.level)
    try:
        asyncio.run(_run(service, config, factory, lambda: parse_config(argv, f"criplex-{service}")))
    except ConfigError as exc:
        print(f"criplex-{service}: configuration error: {exc.message}", file=sys.stderr)
        return 2
    return 0


async def _run(service: str, config: Config, factory: Callable[[DaemonContext], Service],
               reread: Callable[[], Config] | None = None) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    tracing = Tracing(service, config.tracing)
    state_dir = config.state_dir(service)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    events = EventPublisher(service, config)
    ctx = DaemonContext(service, config, tracing, events, state_dir, time.time())
    svc = factory(ctx)
    server = DaemonServer(service, config, tracing)
    svc.register(server)

    async def health(_: HealthRequest) -> Health:
        r = svc.readiness()
        return Health(service, os.getpid(), ctx.started_at, r.ready, r.reason, r.message, r.info or {})

    server.register(HEALTH, health)
    serve_observability(server, ctx.tracing, getattr(svc, "metrics", None))
    if reread is not None:
        install_reload(service, config, reread, _reloader(tracing, getattr(svc, "on_reload", None)))
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(server.serve())
            group.create_task(svc.run())
            group.create_task(_announce(ctx))
    except asyncio.CancelledError:
        log.info("%s stopping", service)
    finally:
        events.close()
        tracing.shutdown()


def _reloader(tracing: Tracing, on_reload: Callable[[Config], None] | None) -> Callable[[Config], None]:
    """What a daemon does with a reloaded configuration: the shell's part (tracing), then the service's."""

    def apply(config: Config) -> None:
        tracing.reconfigure(config.tracing)
        if on_reload is not None:
            on_reload(config)

    return apply


def serve_observability(server: DaemonServer, tracing: Tracing,
                        metrics: Callable[[], MetricsReport] | None = None) -> None:
    """Register METRICS (the service's figures, asked at scrape time) and SPANS (the span ring)."""

    async def report(_: MetricsRequest) -> MetricsReport:
        return metrics() if metrics is not None else MetricsReport()

    async def spans(request: SpansRequest) -> SpansResponse:
        return tracing.spans(request)

    server.register(METRICS, report)
    server.register(SPANS, spans)


async def _announce(ctx: DaemonContext) -> None:
    # Subscribers dial asynchronously; repeat the announcement briefly so one that
    # reconnects a moment after we start still hears it.
    for delay in (0.0, 0.2, 1.0):
        await asyncio.sleep(delay)
        ctx.events.publish(STARTED_TOPIC, Started(ctx.service, os.getpid(), ctx.started_at))


# --- reload (SIGHUP) ---------------------------------------------------------------------


def install_reload(service: str, config: Config, reread: Callable[[], Config],
                   apply: Callable[[Config], None] | None) -> None:
    """On SIGHUP, re-read the configuration and hand its live keys to `apply` (on the loop).

    Without a handler SIGHUP would terminate the process, so every daemon installs one."""
    current = [config]

    def on_hup() -> None:
        applied = reload_config(service, current[0], reread)
        if applied is None:
            return
        current[0] = applied
        if apply is not None:
            try:
                apply(applied)
            except Exception:
                log.exception("%s: applying the reloaded configuration failed", service)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
