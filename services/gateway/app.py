"""The gateway process: the CRI socket, the daemon clients and their health, one lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from services.gateway.bounds import CallBounds
from services.gateway.health import HealthMonitor
from services.gateway.inflight import Inflight
from services.gateway.list_images import ImageListCache
from services.gateway.metrics import CriMetrics
from services.gateway.observability import run_observability
from services.gateway.reconciler import Reconciler
from services.gateway.servicer import generic_handlers
from services.gateway.status_api import route
from services.gateway.status_server import serve_status
from services.gateway.view import StateView, ViewSync
from shared.config import DAEMONS, Config
from shared.daemon import install_reload
from shared.pod_starts import PodStarts
from shared.tracing import Tracing
from shared.transport import DaemonClient

log = logging.getLogger(__name__)


class Gateway:
    """Everything a CRI handler may use: config, tracing, daemon clients, health."""

    def __init__(self, config: Config, tracing: Tracing) -> None:
        self.config = config
        self.tracing = tracing
        self.clients = {name: DaemonClient(name, config, tracing) for name in DAEMONS}
        self.imaged = self.clients["imaged"]
        self.storaged = self.clients["storaged"]
        self.netd = self.clients["netd"]
        self.monitord = self.clients["monitord"]
        self.streamd = self.clients["streamd"]
        self.health = HealthMonitor(config, self.clients)
        self.image_list_cache = ImageListCache()
        self.view = StateView()
        self.view_sync = ViewSync(config, self.monitord, self.view)
        self.inflight = Inflight()
        self.reconciler = Reconciler(self)
        self.cri_metrics = CriMetrics() if config.metrics.enable else None
        self.metrics_changed = asyncio.Event()  # set by a reload that changed [metrics]
        self.bounds = CallBounds(config.gateway)
        self.pod_starts = PodStarts(config.paths.run_dir)

    def on_reload(self, config: Config) -> None:
        """SIGHUP: handlers and the pause image are read from `self.config` on each call; tracing
        and metrics are switched here (the endpoint itself moves in `run_observability`)."""
        metrics_was = self.config.metrics
        self.config = config
        self.tracing.reconfigure(config.tracing)
        if config.metrics.enable != (self.cri_metrics is not None):
            self.cri_metrics = CriMetrics() if config.metrics.enable else None
            for client in self.clients.values():
                client.record_hops(config.metrics.enable)
        if config.metrics != metrics_was:
            self.metrics_changed.set()

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.pod_starts.close()


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leftover socket file from a previous run would make bind fail.
    if path.is_socket():
        path.unlink()


async def serve(config: Config, reread: Callable[[], Config] | None = None) -> None:
    loop = asyncio.get_running_loop()
    # A signal asks for a stop; cancelling the main task instead would cut grpc's own shutdown short.
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    tracing = Tracing("gateway", config.tracing)
    gateway = Gateway(config, tracing)
    limit = config.transport.max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers(generic_handlers(gateway))
    socket_path = config.cri_socket
    _prepare_socket(socket_path)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    os.chmod(socket_path, int(config.gateway.socket_mode, 8))
    log.info("serving CRI v1 on unix://%s", socket_path)
    background = [asyncio.create_task(work, name=name) for name, work in (
        ("health", gateway.health.run()), ("view", gateway.view_sync.run()),
        ("reconciler", gateway.reconciler.run()), ("status-api", serve_status_api(gateway)),
        ("observability", run_observability(gateway)))]
    if reread is not None:
        install_reload("gateway", config, reread, gateway.on_reload)
    for task in background:
        task.add_done_callback(lambda t: _background_ended(t, stopping))
    try:
        await stopping.wait()
        log.info("gateway stopping")
    finally:
        await server.stop(grace=2.0)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        gateway.close()
        tracing.shutdown()


def _background_ended(task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    """Background work only ends at shutdown; anything else is a bug worth a restart."""
    if task.cancelled() or stopping.is_set():
        return
    log.error("gateway background task %s ended: %r; stopping", task.get_name(), task.exception())
    stopping.set()


async def serve_status_api(gateway: Gateway) -> None:
    """The status API (`criplex status info|config|containers`, pause/unpause) beside the CRI socket."""
    started_at = time.time()
    await serve_status(Path(gateway.config.paths.run_dir) / "status.sock",
                       lambda method, path: route(gateway, method, path, started_at))
