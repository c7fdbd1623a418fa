"""CRI ContainerStats: cgroup figures from monitord for one container."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import containers, stats
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def container_stats(gw: Gateway, req: api_pb2.ContainerStatsRequest, call: Call
                          ) -> api_pb2.ContainerStatsResponse:
    id_ = containers.container_id(req.container_id, "ContainerStats")
    await gw.view.wait_synced()
    record = containers.require(gw.view.container(id_), id_)
    (result,) = await stats.container_stats(gw, [record], call.timeout)
    return api_pb2.ContainerStatsResponse(stats=result)
