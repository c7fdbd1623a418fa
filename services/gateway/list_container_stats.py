"""CRI ListContainerStats: cgroup figures from monitord for the containers the filter selects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import stats
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def list_container_stats(gw: Gateway, req: api_pb2.ListContainerStatsRequest, call: Call
                               ) -> api_pb2.ListContainerStatsResponse:
    await gw.view.wait_synced()
    f = req.filter
    records = []
    for record in gw.view.visible_containers():
        config = gw.view.container_config(record)
        if f.id and not record.id.startswith(f.id):
            continue
        if f.pod_sandbox_id and not record.sandbox_id.startswith(f.pod_sandbox_id):
            continue
        if all(config.labels.get(k) == v for k, v in f.label_selector.items()):
            records.append(record)
    return api_pb2.ListContainerStatsResponse(stats=await stats.container_stats(gw, records, call.timeout))
