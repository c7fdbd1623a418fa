"""CRI StopPodSandbox: monitord stops every container of the pod, then netd releases its network."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from services.gateway.sandboxes import require, sandbox_id
from shared.cri import api_pb2
from shared.errors import CriplexError
from shared.schema.monitord import LIST_STATE, STOP_SANDBOX, ListStateRequest, SandboxRef
from shared.schema.netd import REMOVE_NETWORK, RemoveNetworkRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def stop_pod_sandbox(gw: Gateway, req: api_pb2.StopPodSandboxRequest, call: Call
                           ) -> api_pb2.StopPodSandboxResponse:
    id_ = sandbox_id(req.pod_sandbox_id, "StopPodSandbox")
    await gw.view.wait_synced()
    record = require(gw.view.sandbox(id_), id_)
    await gw.monitord.call(STOP_SANDBOX, SandboxRef(record.id), call.timeout)
    if record.netns_path:
        # The pod's IP goes back to the pool at stop, as with CRI-O and containerd.
        await gw.netd.call(REMOVE_NETWORK, RemoveNetworkRequest(record.id), call.timeout)
    await refresh(gw, call)
    return api_pb2.StopPodSandboxResponse()


async def refresh(gw: Gateway, call: Call) -> None:
    """Take monitord's whole state: a stop changes many records at once."""
    with contextlib.suppress(CriplexError):  # else the events bring the same changes a moment later
        gw.view.replace(await gw.monitord.call(LIST_STATE, ListStateRequest(), min(call.timeout, 5.0)))
