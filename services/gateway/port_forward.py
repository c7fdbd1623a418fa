"""CRI PortForward: streamd dials localhost:PORT inside the pod's network namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway import sandboxes
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.errors import FailedPrecondition, InvalidArgument
from shared.schema.monitord import SandboxState
from shared.schema.streamd import PREPARE_PORT_FORWARD, PortForwardSession

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def port_forward(gw: Gateway, req: api_pb2.PortForwardRequest, call: Call) -> api_pb2.PortForwardResponse:
    id_ = sandboxes.sandbox_id(req.pod_sandbox_id, "PortForward")
    bad = [p for p in req.port if not 0 < p < 65536]
    if bad:
        raise InvalidArgument(f"PortForward: port {bad[0]} is out of range")
    await gw.view.wait_synced()
    record = sandboxes.require(gw.view.sandbox(id_), id_)
    if record.state is not SandboxState.READY:
        raise FailedPrecondition(f"PortForward: pod sandbox {id_} is not ready ({record.state.value})")
    session = PortForwardSession(record.id, record.netns_path, tuple(req.port))
    prepared = await gw.streamd.call(PREPARE_PORT_FORWARD, session, call.timeout)
    return api_pb2.PortForwardResponse(url=prepared.url)
