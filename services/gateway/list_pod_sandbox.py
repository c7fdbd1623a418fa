"""CRI ListPodSandbox, served from the gateway's view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import sandboxes
from services.gateway.instrument import Call, Serialized
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


_NO_FILTER = api_pb2.PodSandboxFilter()


async def list_pod_sandbox(gw: Gateway, req: api_pb2.ListPodSandboxRequest, _call: Call
                           ) -> api_pb2.ListPodSandboxResponse | Serialized:
    await gw.view.wait_synced()
    if req.filter == _NO_FILTER:  # the kubelet's relist, every second
        return Serialized(gw.view.memo("ListPodSandbox", lambda: _list(gw, _NO_FILTER).SerializeToString()))
    return _list(gw, req.filter)


def _list(gw: Gateway, f: api_pb2.PodSandboxFilter) -> api_pb2.ListPodSandboxResponse:
    items = []
    for record in gw.view.visible_sandboxes():
        config = gw.view.sandbox_config(record)
        if sandboxes.matches(record, config, f):
            items.append(sandboxes.to_cri_sandbox(record, config))
    return api_pb2.ListPodSandboxResponse(items=items)
