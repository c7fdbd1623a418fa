"""Conversions between monitord's container records and the CRI container messages."""

from __future__ import annotations

import dataclasses
import json

from google.protobuf import json_format

from shared.cri import api_pb2
from shared.errors import InvalidArgument, NotFound
from shared.schema.monitord import ContainerRecord, ContainerState
from shared.typed import to_plain

CRI_STATE = {
    ContainerState.CREATED: api_pb2.CONTAINER_CREATED,
    ContainerState.RUNNING: api_pb2.CONTAINER_RUNNING,
    ContainerState.EXITED: api_pb2.CONTAINER_EXITED,
    ContainerState.UNKNOWN: api_pb2.CONTAINER_UNKNOWN,
    ContainerState.CREATING: api_pb2.CONTAINER_UNKNOWN,
}


def container_id(value: str, method: str) -> str:
    if not value:
        raise InvalidArgument(f"{method}: container_id is empty")
    return value


def require(record: ContainerRecord | None, id_: str) -> ContainerRecord:
    if record is None:
        raise NotFound(f"container {id_} not found")
    return record


def image_spec(config: api_pb2.ContainerConfig) -> api_pb2.ImageSpec:
    """The image as the kubelet named it (crictl shows this); the ID is in `image_id`."""
    spec = api_pb2.ImageSpec()
    spec.CopyFrom(config.image)
    spec.user_specified_image = config.image.user_specified_image or config.image.image
    return spec


def to_cri_container(record: ContainerRecord, config: api_pb2.ContainerConfig) -> api_pb2.Container:
    return api_pb2.Container(
        id=record.id,
        pod_sandbox_id=record.sandbox_id,
        metadata=config.metadata,
        image=image_spec(config),
        image_ref=record.image_ref,
        image_id=record.image_id,
        state=CRI_STATE[record.state],
        created_at=record.created_at,
        labels=config.labels,
        annotations=config.annotations,
    )


def to_cri_status(record: ContainerRecord, config: api_pb2.ContainerConfig) -> api_pb2.ContainerStatus:
    status = api_pb2.ContainerStatus(
        id=record.id,
        metadata=config.metadata,
        state=CRI_STATE[record.state],
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code,
        image=image_spec(config),
        image_ref=record.image_ref,
        image_id=record.image_id,
        reason=record.reason,
        message=record.message,
        labels=config.labels,
        annotations=config.annotations,
        mounts=config.mounts,
        log_path=record.log_path,
    )
    resources = config.linux.resources
    if record.resources_json:
        resources = json_format.Parse(record.resources_json, api_pb2.LinuxContainerResources(),
                                      ignore_unknown_fields=True)
    status.resources.linux.CopyFrom(resources)
    if record.user is not None:
        linux = status.user.linux
        linux.uid = record.user.uid
        linux.gid = record.user.gid
        linux.supplemental_groups.extend(record.user.supplemental_groups)
    known = api_pb2.Signal.DESCRIPTOR.values_by_name
    signal = known[record.stop_signal].number if record.stop_signal in known else 0
    status.stop_signal = signal
    return status


def verbose_info(record: ContainerRecord) -> dict[str, str]:
    plain = to_plain(dataclasses.replace(record, config_json=""))
    plain.pop("config_json", None)
    plain["config"] = json.loads(record.config_json)
    plain["pid"] = record.pid
    return {"info": json.dumps(plain, sort_keys=True)}


def matches(record: ContainerRecord, config: api_pb2.ContainerConfig,
            f: api_pb2.ContainerFilter | api_pb2.ContainerStatsFilter) -> bool:
    """Whether the record passes a ListContainers or a ListContainerStats filter (which has no state)."""
    if f.id and not record.id.startswith(f.id):
        return False
    if f.pod_sandbox_id and not record.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    if isinstance(f, api_pb2.ContainerFilter) and f.HasField("state") and CRI_STATE[record.state] != f.state.state:
        return False
    return all(config.labels.get(k) == v for k, v in f.label_selector.items())
