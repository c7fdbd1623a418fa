"""CRI ContainerStatus, served from the gateway's view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import containers
from services.gateway.instrument import Call, Serialized
from shared.cri import api_pb2
from shared.schema.monitord import ContainerRecord

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def container_status(gw: Gateway, req: api_pb2.ContainerStatusRequest, _call: Call
                           ) -> api_pb2.ContainerStatusResponse | Serialized:
    id_ = containers.container_id(req.container_id, "ContainerStatus")
    await gw.view.wait_synced()
    record = containers.require(gw.view.container(id_), id_)
    if not req.verbose:  # the kubelet asks about each container after every change it sees
        return Serialized(gw.view.memo(f"ContainerStatus/{id_}", lambda: _status(gw, record).SerializeToString()))
    return _status(gw, record, verbose=True)


def _status(gw: Gateway, record: ContainerRecord, verbose: bool = False) -> api_pb2.ContainerStatusResponse:
    status = containers.to_cri_status(record, gw.view.container_config(record))
    response = api_pb2.ContainerStatusResponse(status=status)
    if verbose:
        response.info.update(containers.verbose_info(record))
    return response
