"""CRI Exec: check the container, have streamd prepare a session, return its URL.

The command itself runs later, when the client connects to that URL; streamd runs it
through the container's OCI runtime, so this call carries the runtime's path and --root.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.containers import container_id, require
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.errors import FailedPrecondition, InvalidArgument
from shared.schema.monitord import ContainerRecord, ContainerState
from shared.schema.streamd import PREPARE_EXEC, ExecSession, OciRuntimeRef

if TYPE_CHECKING:
    from services.gateway.app import Gateway


def check_streams(method: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    """The kubelet streaming server's own checks on an exec or attach request."""
    if tty and stderr:
        raise InvalidArgument(f"{method}: tty and stderr cannot both be true (a tty merges stderr into stdout)")
    if not (stdin or stdout or stderr):
        raise InvalidArgument(f"{method}: one of stdin, stdout or stderr must be set")


async def running_container(gw: Gateway, value: str, method: str) -> ContainerRecord:
    id_ = container_id(value, method)
    await gw.view.wait_synced()
    record = require(gw.view.container(id_), id_)
    if record.state is not ContainerState.RUNNING:
        raise FailedPrecondition(f"{method}: container {id_} is not running ({record.state.value})")
    return record


def runtime_of(gw: Gateway, record: ContainerRecord) -> OciRuntimeRef:
    monitord = gw.config.monitord
    handler = record.runtime_handler or monitord.default_runtime
    if handler not in monitord.runtimes:
        raise FailedPrecondition(f"container {record.id}'s runtime handler {handler!r} is no longer configured")
    return OciRuntimeRef(monitord.runtimes[handler].path, monitord.runtime_root(handler, gw.config.paths.run_dir))


async def exec_(gw: Gateway, req: api_pb2.ExecRequest, call: Call) -> api_pb2.ExecResponse:
    if not req.cmd:
        raise InvalidArgument("Exec: cmd is empty")
    check_streams("Exec", req.tty, req.stdin, req.stdout, req.stderr)
    record = await running_container(gw, req.container_id, "Exec")
    session = ExecSession(record.id, runtime_of(gw, record), tuple(req.cmd), req.tty, req.stdin, req.stdout,
                          req.stderr)
    prepared = await gw.streamd.call(PREPARE_EXEC, session, call.timeout)
    return api_pb2.ExecResponse(url=prepared.url)
