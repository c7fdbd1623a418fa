"""The gateway process: the CRI socket, the daemon clients and their health, one lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import grpc

from services.gateway.health import HealthMonitor
from services.gateway.inflight import Inflight
from services.gateway.list_images import ImageListCache
from services.gateway.reconciler import Reconciler
from services.gateway.servicer import generic_handlers
from services.gateway.view import StateView, ViewSync
from shared.config import DAEMONS, Config
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
        self.health = HealthMonitor(config, self.clients)
        self.image_list_cache = ImageListCache()
        self.view = StateView()
        self.view_sync = ViewSync(config, self.monitord, self.view)
        self.inflight = Inflight()
        self.reconciler = Reconciler(self)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _prepare_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A leftover socket file from a previous run would make bind fail.
    if path.is_socket():
        path.unlink()


async def serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
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
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(gateway.health.run())
            group.create_task(gateway.view_sync.run())
            group.create_task(gateway.reconciler.run())
            group.create_task(server.wait_for_termination())
    except asyncio.CancelledError:
        log.info("gateway stopping")
    finally:
        await server.stop(grace=2.0)
        gateway.close()
        tracing.shutdown()
