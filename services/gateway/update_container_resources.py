"""CRI UpdateContainerResources: monitord applies the new limits with `runc update`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.containers import container_id
from services.gateway.instrument import Call
from services.gateway.view import to_json
from shared.cri import api_pb2
from shared.schema.monitord import UPDATE_RESOURCES, UpdateResourcesRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def update_container_resources(gw: Gateway, req: api_pb2.UpdateContainerResourcesRequest, call: Call
                                     ) -> api_pb2.UpdateContainerResourcesResponse:
    id_ = container_id(req.container_id, "UpdateContainerResources")
    record = await gw.monitord.call(UPDATE_RESOURCES, UpdateResourcesRequest(id_, to_json(req.linux)), call.timeout)
    gw.view.apply_container(record)
    return api_pb2.UpdateContainerResourcesResponse()
