"""CRI ListContainers, served from the gateway's view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import containers
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def list_containers(gw: Gateway, req: api_pb2.ListContainersRequest, _call: Call
                          ) -> api_pb2.ListContainersResponse:
    await gw.view.wait_synced()
    f = req.filter
    items = []
    for record in gw.view.visible_containers():
        config = gw.view.container_config(record)
        if containers.matches(record, config, f):
            items.append(containers.to_cri_container(record, config))
    return api_pb2.ListContainersResponse(containers=items)
