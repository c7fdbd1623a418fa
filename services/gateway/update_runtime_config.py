"""CRI UpdateRuntimeConfig: the kubelet passes the node's pod CIDR; netd hands it to CNI.

The kubelet calls this at start and whenever the node's pod CIDR changes; the CIDR
becomes CNI's `runtimeConfig.ipRanges` for the pods created after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.netd import SET_NODE_NETWORK, NodeNetworkRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def update_runtime_config(gw: Gateway, req: api_pb2.UpdateRuntimeConfigRequest, call: Call
                                ) -> api_pb2.UpdateRuntimeConfigResponse:
    cidr = req.runtime_config.network_config.pod_cidr
    if cidr:
        await gw.netd.call(SET_NODE_NETWORK, NodeNetworkRequest(cidr), call.timeout)
    return api_pb2.UpdateRuntimeConfigResponse()
