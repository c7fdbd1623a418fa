"""CRI RemovePodSandbox: monitord forgets the pod and its containers first, then their rootfs
and the network go. Idempotent: removing an unknown pod succeeds, as the CRI asks.

The owner's record goes first, so a crash midway leaves only resources without an owner,
which the reconciler removes, never a record pointing at something already gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from services.gateway.sandboxes import sandbox_id
from services.gateway.stop_pod_sandbox import refresh
from shared.cri import api_pb2
from shared.errors import CriplexError
from shared.schema.monitord import REMOVE_SANDBOX, SandboxRef
from shared.schema.netd import REMOVE_NETWORK, RemoveNetworkRequest
from shared.schema.storaged import REMOVE_ROOTFS, RemoveRootfsRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = logging.getLogger(__name__)


async def remove_pod_sandbox(gw: Gateway, req: api_pb2.RemovePodSandboxRequest, call: Call
                             ) -> api_pb2.RemovePodSandboxResponse:
    id_ = sandbox_id(req.pod_sandbox_id, "RemovePodSandbox")
    known = gw.view.sandboxes.get(id_)
    with gw.inflight.hold(id_):
        removed = await gw.monitord.call(REMOVE_SANDBOX, SandboxRef(id_), call.timeout)
        # The infra container's rootfs (pods sharing a PID namespace) is keyed by the sandbox ID;
        # a pod the view does not know may have one too (the reconciler would find it otherwise).
        infra = [id_] if known is None or known.infra_container_id else []
        owned = [*removed.container_ids, *infra]
        results = await asyncio.gather(
            gw.netd.call(REMOVE_NETWORK, RemoveNetworkRequest(id_), call.timeout),
            *(gw.storaged.call(REMOVE_ROOTFS, RemoveRootfsRequest(c), call.timeout) for c in owned),
            return_exceptions=True,
        )
    for result in results:
        if isinstance(result, CriplexError):
            log.warning("RemovePodSandbox %s: %s (the reconciler will retry)", id_, result.message)
    await refresh(gw, call)
    return api_pb2.RemovePodSandboxResponse()
