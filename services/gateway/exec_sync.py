"""CRI ExecSync: monitord runs the command in the container and returns its output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.containers import container_id
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.errors import InvalidArgument
from shared.schema.monitord import EXEC_SYNC, ExecSyncRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway

_MARGIN_S = 5.0


async def exec_sync(gw: Gateway, req: api_pb2.ExecSyncRequest, call: Call) -> api_pb2.ExecSyncResponse:
    id_ = container_id(req.container_id, "ExecSync")
    if not req.cmd:
        raise InvalidArgument("ExecSync: cmd is empty")
    timeout = max(int(req.timeout), 0)
    # monitord enforces the command's own timeout and answers DEADLINE_EXCEEDED for it.
    hop = call.timeout if call.has_deadline or not timeout else timeout + _MARGIN_S
    async with gw.bounds.exec_sync.slot(hop) as left:
        result = await gw.monitord.call(EXEC_SYNC, ExecSyncRequest(id_, tuple(req.cmd), timeout), left)
    return api_pb2.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)
