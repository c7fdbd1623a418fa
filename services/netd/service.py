"""netd's service: pod network namespaces and their CNI networks (shared.schema.netd), and network readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.netd.cni import CniRunner, PluginChain
from services.netd.cni_cache import CniCache
from services.netd.cni_config import CniConfigWatch
from services.netd.cni_exec import host_env
from services.netd.networks import PodNetworks
from services.netd.node_network import NodeNetwork
from shared.daemon import DaemonContext, Readiness, when_ready
from shared.schema.netd import (
    CREATE_NETWORK,
    LIST_NETWORKS,
    REMOVE_NETWORK,
    SET_NODE_NETWORK,
    CreateNetworkRequest,
    ListNetworksRequest,
    ListNetworksResponse,
    NodeNetworkRequest,
    NodeNetworkResponse,
    PodNetwork,
    RemoveNetworkRequest,
    RemoveNetworkResponse,
)
from shared.transport import DaemonServer


class NetdService:
    def __init__(self, ctx: DaemonContext, cni: CniRunner | None = None) -> None:
        netd = ctx.config.netd
        self.cni_config = CniConfigWatch(Path(netd.cni_conf_dir), tuple(netd.cni_bin_dirs), netd.cni_network)
        self.node = NodeNetwork(ctx.state_dir / "node-network.json")
        self.cni = cni or PluginChain(CniCache(ctx.state_dir / "cni"), self.cni_config.usable_network,
                                      lambda: self.node.pod_cidr, tuple(netd.cni_bin_dirs), netd.plugin_timeout,
                                      host_env(), ctx.tracing)
        self.networks = PodNetworks(ctx.state_dir / "networks", Path(ctx.config.paths.run_dir) / "netns", self.cni)
        self._loaded = asyncio.Event()

    def register(self, server: DaemonServer) -> None:
        server.register(CREATE_NETWORK, when_ready(self._loaded, self.create_network))
        server.register(REMOVE_NETWORK, when_ready(self._loaded, self.remove_network))
        server.register(LIST_NETWORKS, when_ready(self._loaded, self.list_networks))
        server.register(SET_NODE_NETWORK, when_ready(self._loaded, self.set_node_network))

    async def run(self) -> None:
        await asyncio.to_thread(self.node.load)
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

    async def set_node_network(self, request: NodeNetworkRequest) -> NodeNetworkResponse:
        await self.node.set(request.pod_cidr)
        return NodeNetworkResponse()
