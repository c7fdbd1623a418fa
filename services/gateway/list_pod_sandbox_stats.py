"""CRI ListPodSandboxStats: one monitord call for every selected pod's containers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import sandboxes, stats
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def list_pod_sandbox_stats(gw: Gateway, req: api_pb2.ListPodSandboxStatsRequest, call: Call
                                 ) -> api_pb2.ListPodSandboxStatsResponse:
    await gw.view.wait_synced()
    pods = [s.id for s in gw.view.visible_sandboxes() if sandboxes.matches(s, gw.view.sandbox_config(s), req.filter)]
    records = {c.id: c for c in gw.view.visible_containers() if c.sandbox_id in pods}
    per_container = await stats.container_stats(gw, list(records.values()), call.timeout)
    out = []
    for pod in pods:
        mine = [s for s in per_container if records[s.attributes.id].sandbox_id == pod]
        out.append(stats.pod_stats(gw, pod, mine, records))
    return api_pb2.ListPodSandboxStatsResponse(stats=out)
