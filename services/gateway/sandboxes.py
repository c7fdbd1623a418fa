"""Conversions between monitord's sandbox records and the CRI pod sandbox messages."""

from __future__ import annotations

import dataclasses
import json

from shared.cri import api_pb2
from shared.errors import InvalidArgument, NotFound
from shared.schema.monitord import SandboxRecord, SandboxState
from shared.typed import to_plain

CRI_STATE = {
    SandboxState.READY: api_pb2.SANDBOX_READY,
    SandboxState.NOTREADY: api_pb2.SANDBOX_NOTREADY,
    SandboxState.CREATING: api_pb2.SANDBOX_NOTREADY,
}


def sandbox_id(value: str, method: str) -> str:
    if not value:
        raise InvalidArgument(f"{method}: pod_sandbox_id is empty")
    return value


def check_sandbox_config(config: api_pb2.PodSandboxConfig) -> None:
    meta = config.metadata
    missing = [name for name, value in (("name", meta.name), ("namespace", meta.namespace), ("uid", meta.uid))
               if not value]
    if missing:
        raise InvalidArgument(f"RunPodSandbox: metadata.{missing[0]} is empty")


def require(record: SandboxRecord | None, id_: str) -> SandboxRecord:
    if record is None:
        raise NotFound(f"pod sandbox {id_} not found")
    return record


def to_cri_sandbox(record: SandboxRecord, config: api_pb2.PodSandboxConfig) -> api_pb2.PodSandbox:
    return api_pb2.PodSandbox(
        id=record.id,
        metadata=config.metadata,
        state=CRI_STATE[record.state],
        created_at=record.created_at,
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=record.runtime_handler,
    )


def to_cri_status(record: SandboxRecord, config: api_pb2.PodSandboxConfig) -> api_pb2.PodSandboxStatus:
    network = api_pb2.PodSandboxNetworkStatus()
    if record.ips and record.state is SandboxState.READY:
        network.ip = record.ips[0]
        network.additional_ips.extend(api_pb2.PodIP(ip=ip) for ip in record.ips[1:])
    options = config.linux.security_context.namespace_options
    return api_pb2.PodSandboxStatus(
        id=record.id,
        metadata=config.metadata,
        state=CRI_STATE[record.state],
        created_at=record.created_at,
        network=network,
        linux=api_pb2.LinuxPodSandboxStatus(namespaces=api_pb2.Namespace(options=options)),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=record.runtime_handler,
    )


def verbose_info(record: SandboxRecord) -> dict[str, str]:
    plain = to_plain(dataclasses.replace(record, config_json=""))
    plain.pop("config_json", None)
    plain["config"] = json.loads(record.config_json)
    return {"info": json.dumps(plain, sort_keys=True)}


def matches(record: SandboxRecord, config: api_pb2.PodSandboxConfig,
            f: api_pb2.PodSandboxFilter | api_pb2.PodSandboxStatsFilter) -> bool:
    """Whether the record passes a ListPodSandbox or a ListPodSandboxStats filter (which has no state)."""
    if f.id and not record.id.startswith(f.id):
        return False
    if isinstance(f, api_pb2.PodSandboxFilter) and f.HasField("state") and CRI_STATE[record.state] != f.state.state:
        return False
    return all(config.labels.get(k) == v for k, v in f.label_selector.items())
