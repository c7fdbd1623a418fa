"""CRI StopContainer: the stop signal, then SIGKILL after `timeout` seconds (monitord)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.containers import container_id
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.monitord import STOP_CONTAINER, StopContainerRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway

# Beyond the grace period: SIGKILL and the exit's bookkeeping still take a moment.
_KILL_MARGIN_S = 10.0


async def stop_container(gw: Gateway, req: api_pb2.StopContainerRequest, call: Call
                         ) -> api_pb2.StopContainerResponse:
    id_ = container_id(req.container_id, "StopContainer")
    timeout = max(int(req.timeout), 0)
    deadline = call.timeout if call.has_deadline else timeout + _KILL_MARGIN_S
    record = await gw.monitord.call(STOP_CONTAINER, StopContainerRequest(id_, timeout), max(deadline, 1.0))
    gw.view.apply_container(record)
    return api_pb2.StopContainerResponse()
