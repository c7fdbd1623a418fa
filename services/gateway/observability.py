"""What the gateway serves for observing criplex: its span ring over nng (for `criplex trace`),
and `/metrics` when `[metrics] enable` is set (a reload starts, moves or stops it)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from services.gateway.metrics import MetricsEndpoint
from shared.daemon import serve_observability
from shared.transport import DaemonServer

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = logging.getLogger(__name__)


async def run_observability(gateway: Gateway) -> None:
    """Until cancelled: SPANS (and an empty METRICS) on `<run_dir>/ipc/gateway.sock`, like every daemon,
    and the Prometheus endpoint as `gateway.config.metrics` says, again after each reload."""
    server = DaemonServer("gateway", gateway.config, gateway.tracing)
    serve_observability(server, gateway.tracing)
    endpoint = MetricsEndpoint(gateway)
    # At start a bad [metrics] address fails the gateway, as any bad listener would; after a
    # reload it is logged and metrics stay off until the next one.
    await endpoint.apply(gateway.config.metrics)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(server.serve())
            while True:
                await gateway.metrics_changed.wait()
                gateway.metrics_changed.clear()
                try:
                    await endpoint.apply(gateway.config.metrics)
                except OSError as exc:
                    log.error("metrics: cannot serve on %s:%d: %s; metrics stay off",
                              gateway.config.metrics.address, gateway.config.metrics.port, exc)
    finally:
        await asyncio.to_thread(endpoint.stop)
