"""CRI StartContainer: monitord runs `runc start`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.containers import container_id
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.monitord import START_CONTAINER, ContainerRef

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def start_container(gw: Gateway, req: api_pb2.StartContainerRequest, call: Call
                          ) -> api_pb2.StartContainerResponse:
    id_ = container_id(req.container_id, "StartContainer")
    gw.view.apply_container(await gw.monitord.call(START_CONTAINER, ContainerRef(id_), call.timeout))
    return api_pb2.StartContainerResponse()
