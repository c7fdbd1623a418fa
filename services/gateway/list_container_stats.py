"""CRI ListContainerStats: cgroup figures from monitord for the containers the filter selects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import containers, stats
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def list_container_stats(gw: Gateway, req: api_pb2.ListContainerStatsRequest, call: Call
                               ) -> api_pb2.ListContainerStatsResponse:
    await gw.view.wait_synced()
    view = gw.view
    records = [r for r in view.visible_containers() if containers.matches(r, view.container_config(r), req.filter)]
    return api_pb2.ListContainerStatsResponse(stats=await stats.container_stats(gw, records, call.timeout))
