"""CRI ReopenContainerLog: conmon reopens the log file after the kubelet rotated it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.containers import container_id
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.monitord import REOPEN_LOG, ContainerRef

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def reopen_container_log(gw: Gateway, req: api_pb2.ReopenContainerLogRequest, call: Call
                               ) -> api_pb2.ReopenContainerLogResponse:
    await gw.monitord.call(REOPEN_LOG, ContainerRef(container_id(req.container_id, "ReopenContainerLog")),
                           call.timeout)
    return api_pb2.ReopenContainerLogResponse()
