"""CRI ListPodSandbox, served from the gateway's view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import sandboxes
from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def list_pod_sandbox(gw: Gateway, req: api_pb2.ListPodSandboxRequest, _call: Call
                           ) -> api_pb2.ListPodSandboxResponse:
    await gw.view.wait_synced()
    f = req.filter
    items = []
    for record in gw.view.visible_sandboxes():
        config = gw.view.sandbox_config(record)
        if sandboxes.matches(record, config, f):
            items.append(sandboxes.to_cri_sandbox(record, config))
    return api_pb2.ListPodSandboxResponse(items=items)
