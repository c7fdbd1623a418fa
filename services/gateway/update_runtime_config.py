"""CRI UpdateRuntimeConfig: the kubelet passes the node's pod CIDR.

Accepted and remembered by nothing yet: the CNI `ipRanges` it feeds come with the
networking work (netd). Answering OK matters: the kubelet calls this at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def update_runtime_config(_gw: Gateway, _req: api_pb2.UpdateRuntimeConfigRequest, _call: Call
                                ) -> api_pb2.UpdateRuntimeConfigResponse:
    return api_pb2.UpdateRuntimeConfigResponse()
