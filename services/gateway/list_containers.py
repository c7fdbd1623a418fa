"""CRI ListContainers, served from the gateway's view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import containers
from services.gateway.instrument import Call, Serialized
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


_NO_FILTER = api_pb2.ContainerFilter()


async def list_containers(gw: Gateway, req: api_pb2.ListContainersRequest, _call: Call
                          ) -> api_pb2.ListContainersResponse | Serialized:
    await gw.view.wait_synced()
    if req.filter == _NO_FILTER:  # the kubelet's relist, every second
        return Serialized(gw.view.memo("ListContainers", lambda: _list(gw, _NO_FILTER).SerializeToString()))
    return _list(gw, req.filter)


def _list(gw: Gateway, f: api_pb2.ContainerFilter) -> api_pb2.ListContainersResponse:
    items = []
    for record in gw.view.visible_containers():
        config = gw.view.container_config(record)
        if containers.matches(record, config, f):
            items.append(containers.to_cri_container(record, config))
    return api_pb2.ListContainersResponse(containers=items)
