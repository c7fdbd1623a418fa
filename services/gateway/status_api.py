"""The status API's routes, as CRI-O's `crio status` serves them: /info, /config, /containers/:id,
and /pause/:id, /unpause/:id.

Where CRI-O wants a full container ID, :id here may also be a prefix of one, as crictl takes
them: a prefix naming no container is 404, one naming several is 400 with the candidates. 400,
not 409: in this API 409 says the container's state forbids the action (pause of a stopped
container); an ambiguous prefix is the request not naming one container at all, whatever the
containers' states, and only a longer ID from the client fixes it.

Answers come from the gateway's view and its health monitor, never from a round trip, except
pause and unpause, which monitord carries out with `runc pause` / `runc resume`. The HTTP side
(h11 on a unix socket) is in `status_server.py`; this module maps a method and a path to a
`StatusReply`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import Code, CriplexError, InvalidArgument, NotFound
from shared.schema.monitord import PAUSE_CONTAINER, UNPAUSE_CONTAINER, ContainerRecord, ContainerRef

if TYPE_CHECKING:
    from services.gateway.app import Gateway

# CRI-O reports the identity mapping over the whole 32-bit range when no user namespace
# remapping is configured; criplex never remaps.
_FULL_RANGE = [{"container_id": 0, "host_id": 0, "size": 4294967295}]
_CALL_TIMEOUT_S = 30.0
_CANDIDATES_SHOWN = 10
_HTTP_STATUS = {Code.NOT_FOUND: 404, Code.FAILED_PRECONDITION: 409, Code.INVALID_ARGUMENT: 400,
                Code.UNAVAILABLE: 503, Code.DEADLINE_EXCEEDED: 504}


@dataclass(frozen=True)
class StatusReply:
    status: int
    body: bytes
    content_type: str = "application/json"

    @staticmethod
    def json(value: Any, status: int = 200) -> StatusReply:
        return StatusReply(status, json.dumps(value).encode() + b"\n")

    @staticmethod
    def error(status: int, message: str) -> StatusReply:
        return StatusReply(status, message.encode() + b"\n", "text/plain; charset=utf-8")


async def route(gw: Gateway, method: str, path: str, started_at: float) -> StatusReply:
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if method == "GET" and parts == ["info"]:
        return StatusReply.json(info(gw, started_at))
    if method == "GET" and parts == ["config"]:
        return StatusReply(200, gw.config.to_toml().encode(), "application/toml")
    if method == "GET" and len(parts) == 2 and parts[0] == "containers":
        try:
            return StatusReply.json(container_info(gw, resolve_container(gw, parts[1])))
        except CriplexError as exc:
            return _error_reply(exc)
    if method == "POST" and len(parts) == 2 and parts[0] in ("pause", "unpause"):
        return await pause(gw, parts[1], parts[0] == "pause")
    known = parts[:1] in (["info"], ["config"], ["containers"], ["pause"], ["unpause"])
    return StatusReply.error(405 if known else 404, f"{method} {path}: no such route")


def info(gw: Gateway, started_at: float) -> dict[str, Any]:
    now = time.time()
    daemons: dict[str, Any] = {"gateway": {"pid": os.getpid(), "uptime_s": round(now - started_at, 3),
                                           "restarts": 0, "ready": True, "connected": True}}
    for st in gw.health.states():
        health = st.health
        daemons[st.service] = {
            "pid": health.pid if health else 0,
            "uptime_s": round(now - health.started_at, 3) if health else 0.0,
            # Restarts since the gateway started (supervisord keeps no count).
            "restarts": st.restarts,
            "ready": st.ready,
            "connected": st.connected,
            "reason": health.reason if health else st.error,
        }
    return {
        "storage_driver": "overlay",
        "storage_image": "",
        "storage_root": str(gw.config.state_dir("storaged")),
        "cgroup_driver": gw.config.monitord.cgroup_manager,
        "default_id_mappings": {"uids": _FULL_RANGE, "gids": _FULL_RANGE},
        "daemons": daemons,
    }


def resolve_container(gw: Gateway, id_or_prefix: str) -> ContainerRecord:
    """The one container of the view whose ID is, or starts with, `id_or_prefix`.

    NotFound when none does; InvalidArgument, naming some of them, when several do."""
    exact = gw.view.container(id_or_prefix)
    if exact is not None:
        return exact
    matches = sorted((r for r in gw.view.visible_containers() if r.id.startswith(id_or_prefix)),
                     key=lambda r: r.id)
    if not matches:
        raise NotFound(f"container {id_or_prefix} not found")
    if len(matches) > 1:
        shown = ", ".join(r.id for r in matches[:_CANDIDATES_SHOWN])
        more = f" and {len(matches) - _CANDIDATES_SHOWN} more" if len(matches) > _CANDIDATES_SHOWN else ""
        raise InvalidArgument(f"container ID prefix {id_or_prefix} is ambiguous: {len(matches)} containers match "
                              f"({shown}{more})")
    return matches[0]


def container_info(gw: Gateway, record: ContainerRecord) -> dict[str, Any]:
    """CRI-O's ContainerInfo for one container of the view."""
    config = gw.view.container_config(record)
    sandbox = gw.view.sandbox(record.sandbox_id)
    return {
        "name": record.name,
        "pid": record.pid,
        "image": config.image.image or record.image_id,
        "image_ref": record.image_ref,
        "created_time": record.created_at,
        "labels": dict(config.labels),
        "annotations": dict(config.annotations),
        "crio_annotations": {},
        "log_path": record.log_path,
        "root": record.rootfs,
        "sandbox": record.sandbox_id,
        "ip_addresses": list(sandbox.ips) if sandbox is not None else [],
        "state": record.state.value,
        "paused": record.paused,
    }


async def pause(gw: Gateway, id_: str, frozen: bool) -> StatusReply:
    method = PAUSE_CONTAINER if frozen else UNPAUSE_CONTAINER
    try:
        target = resolve_container(gw, id_)
        record: ContainerRecord = await gw.monitord.call(method, ContainerRef(target.id), _CALL_TIMEOUT_S)
    except CriplexError as exc:
        return _error_reply(exc)
    gw.view.apply_container(record)
    return StatusReply.json({"id": record.id, "paused": record.paused})


def _error_reply(exc: CriplexError) -> StatusReply:
    return StatusReply.error(_HTTP_STATUS.get(exc.code, 500), exc.message)
