"""What the gateway serves for observing criplex: its span ring over nng (for `criplex trace`),
and `/metrics` when `[metrics] enable` is set."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from services.gateway.metrics import MetricsEndpoint
from shared.daemon import serve_observability
from shared.transport import DaemonServer

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def run_observability(gateway: Gateway) -> None:
    """Until cancelled: SPANS (and an empty METRICS) on `<run_dir>/ipc/gateway.sock`, like every daemon,
    and the Prometheus endpoint."""
    server = DaemonServer("gateway", gateway.config, gateway.tracing)
    serve_observability(server, gateway.tracing)
    endpoint = None
    if gateway.cri_metrics is not None:
        endpoint = MetricsEndpoint(gateway, gateway.cri_metrics)
        endpoint.start()
    try:
        await server.serve()
    finally:
        if endpoint is not None:
            # Off the loop: a scrape in progress waits on the loop, and shutdown waits on it.
            await asyncio.to_thread(endpoint.stop)
