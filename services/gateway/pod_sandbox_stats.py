"""CRI PodSandboxStats: the pod's figures are the sum of its containers' (no infra container)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import sandboxes, stats
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def pod_sandbox_stats(gw: Gateway, req: api_pb2.PodSandboxStatsRequest, call: Call
                            ) -> api_pb2.PodSandboxStatsResponse:
    id_ = sandboxes.sandbox_id(req.pod_sandbox_id, "PodSandboxStats")
    await gw.view.wait_synced()
    sandboxes.require(gw.view.sandbox(id_), id_)
    records = {c.id: c for c in gw.view.visible_containers() if c.sandbox_id == id_}
    per_container = await stats.container_stats(gw, list(records.values()), call.timeout)
    return api_pb2.PodSandboxStatsResponse(stats=stats.pod_stats(gw, id_, per_container, records))
