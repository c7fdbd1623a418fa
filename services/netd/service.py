"""netd's service: pod network namespaces (shared.schema.netd) and network readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.netd.cni import CniRunner, LoopbackOnly
from services.netd.cni_config import CniConfigWatch
from services.netd.networks import PodNetworks
from shared.daemon import DaemonContext, Readiness, when_ready
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


class NetdService:
    def __init__(self, ctx: DaemonContext, cni: CniRunner | None = None) -> None:
        self.networks = PodNetworks(ctx.state_dir / "networks", Path(ctx.config.paths.run_dir) / "netns",
                                    cni or LoopbackOnly())
        self.cni_config = CniConfigWatch(Path(ctx.config.netd.cni_conf_dir))
        self._loaded = asyncio.Event()

    def register(self, server: DaemonServer) -> None:
        server.register(CREATE_NETWORK, when_ready(self._loaded, self.create_network))
        server.register(REMOVE_NETWORK, when_ready(self._loaded, self.remove_network))
        server.register(LIST_NETWORKS, when_ready(self._loaded, self.list_networks))


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
