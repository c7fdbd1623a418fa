"""netd's service: pod network namespaces (shared.schema.netd) and network readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from services.netd.cni import CniRunner, LoopbackOnly
from services.netd.cni_config import CniConfigWatch
from services.netd.networks import PodNetworks
from shared.daemon import DaemonContext, Readiness
from shared.schema.netd import (
    CREATE_NETWORK,
    LIST_NETWORKS,
    REMOVE_NETWORK,
    CreateNetworkRequest,
    ListNetworksRequest,
    ListNetworksResponse,
    PodNetwork,
    RemoveNetworkRequest,
    RemoveNetworkResponse,
)
from shared.transport import DaemonServer

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class NetdService:
    def __init__(self, ctx: DaemonContext, cni: CniRunner | None = None) -> None:
        self.networks = PodNetworks(ctx.state_dir / "networks", Path(ctx.config.paths.run_dir) / "netns",
                                    cni or LoopbackOnly())
        self.cni_config = CniConfigWatch(Path(ctx.config.netd.cni_conf_dir))
        self._loaded = asyncio.Event()

    def register(self, server: DaemonServer) -> None:
        server.register(CREATE_NETWORK, self._once_loaded(self.create_network))
        server.register(REMOVE_NETWORK, self._once_loaded(self.remove_network))
        server.register(LIST_NETWORKS, self._once_loaded(self.list_networks))

    def _once_loaded(self, handler: Callable[[Req], Awaitable[Resp]]) -> Callable[[Req], Awaitable[Resp]]:
        # Calls that arrive while the records load wait for them (within their deadline).
        async def wrapped(request: Req) -> Resp:
            await self._loaded.wait()
            return await handler(request)

        return wrapped

    async def run(self) -> None:
        await self.networks.load()
        self._loaded.set()
        await self.cni_config.run()

    def readiness(self) -> Readiness:
        return self.cni_config.current

    async def create_network(self, request: CreateNetworkRequest) -> PodNetwork:
        return await self.networks.create(request)

    async def remove_network(self, request: RemoveNetworkRequest) -> RemoveNetworkResponse:
        return RemoveNetworkResponse(await self.networks.remove(request.sandbox_id))

    async def list_networks(self, _: ListNetworksRequest) -> ListNetworksResponse:
        return ListNetworksResponse(tuple(self.networks.list()))
