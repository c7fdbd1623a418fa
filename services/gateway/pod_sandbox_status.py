"""CRI PodSandboxStatus, served from the gateway's view."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from services.gateway import containers, sandboxes
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def pod_sandbox_status(gw: Gateway, req: api_pb2.PodSandboxStatusRequest, _call: Call
                             ) -> api_pb2.PodSandboxStatusResponse:
    id_ = sandboxes.sandbox_id(req.pod_sandbox_id, "PodSandboxStatus")
    await gw.view.wait_synced()
    record = sandboxes.require(gw.view.sandbox(id_), id_)
    response = api_pb2.PodSandboxStatusResponse(
        status=sandboxes.to_cri_status(record, gw.view.sandbox_config(record)),
        timestamp=time.time_ns(),
    )
    # The kubelet's Evented PLEG reads the containers from here.
    for c in gw.view.visible_containers():
        if c.sandbox_id == record.id:
            response.containers_statuses.append(containers.to_cri_status(c, gw.view.container_config(c)))
    if req.verbose:
        response.info.update(sandboxes.verbose_info(record))
    return response
