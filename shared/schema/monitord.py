"""monitord's public surface: pod sandboxes and containers on an OCI runtime through conmon.

monitord owns the sandbox and container records (see ARCHITECTURE.md, "Who owns what").
Every change to a record gets a fresh `revision` (nanoseconds, strictly increasing
across restarts) and is published on STATE_TOPIC as a `StateChange`; the gateway
keeps its view of pods and containers from these, applies a record only when its
revision is newer than the one it holds, and relists with LIST_STATE whenever the
event stream may have lost something.

The CRI configs travel and are stored as protobuf JSON (`json_format`): they are the
kubelet's own typed, versioned messages, re-declaring their ~100 fields here would be a
second definition of the same thing, and JSON keeps the records readable with `cat`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shared.schema.imaged import ImageRecord
from shared.wire import Method

STATE_TOPIC = "monitord.state"


class SandboxState(enum.Enum):
    CREATING = "creating"  # reserved: name taken, namespaces being made; not listed to the kubelet
    READY = "ready"
    NOTREADY = "notready"


class ContainerState(enum.Enum):
    CREATING = "creating"  # reserved: not listed to the kubelet
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    name: str  # the reserved name: k8s_POD_<name>_<namespace>_<uid>_<attempt>
    config_json: str  # CRI PodSandboxConfig
    runtime_handler: str
    state: SandboxState
    created_at: int  # unix ns
    revision: int
    netns_path: str = ""  # "" for a host-network pod
    ips: tuple[str, ...] = ()
    ipc_path: str = ""  # "" when the pod uses the host's IPC namespace
    uts_path: str = ""
    shm_path: str = ""
    resolv_path: str = ""
    hosts_path: str = ""
    hostname_path: str = ""
    cgroup_parent: str = ""
    infra_container_id: str = ""  # only when the pod shares its PID namespace (NamespaceOption.pid = POD)
    infra_pid: int = 0


@dataclass(frozen=True)
class ContainerUser:
    uid: int
    gid: int
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str  # the reserved name: k8s_<name>_<pod name>_<namespace>_<uid>_<attempt>
    config_json: str  # CRI ContainerConfig
    image_id: str
    image_ref: str  # a repo digest when known, else the image ID
    state: ContainerState
    created_at: int  # unix ns
    revision: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""  # Completed / Error / OOMKilled, as the CRI reports
    message: str = ""
    pid: int = 0
    log_path: str = ""  # absolute; "" when the config names no log
    rootfs: str = ""
    bundle: str = ""
    resources_json: str = ""  # CRI LinuxContainerResources currently applied; "" = as created
    user: ContainerUser | None = None
    stop_signal: str = ""  # resolved: config's, else the image's, else SIGTERM
    runtime_handler: str = ""
    # Frozen by `runc pause` (the status API's POST /pause). Still RUNNING to the CRI, as with CRI-O.
    paused: bool = False


@dataclass(frozen=True)
class StateChange:
    """Published on STATE_TOPIC. A record of None means it was removed."""

    kind: str  # "sandbox" | "container"
    id: str
    revision: int
    sandbox: SandboxRecord | None = None
    container: ContainerRecord | None = None


# --- sandboxes -------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateSandboxRequest:
    """Reserve the pod's name and make what it owns apart from its network: IPC and UTS
    namespaces, /dev/shm, hostname, hosts and resolv.conf. The record stays CREATING until
    START_SANDBOX, which the gateway calls once netd has made the network."""

    id: str
    config_json: str
    runtime_handler: str


@dataclass(frozen=True)
class StartSandboxRequest:
    id: str
    netns_path: str  # "" for a host-network pod
    ips: tuple[str, ...] = ()
    # The pause image's rootfs, only when the pod needs an infra container.
    infra_rootfs: str = ""
    infra_image: ImageRecord | None = None


@dataclass(frozen=True)
class SandboxRef:
    id: str


@dataclass(frozen=True)
class StopSandboxResponse:
    container_ids: tuple[str, ...]  # containers it stopped


@dataclass(frozen=True)
class RemoveSandboxResponse:
    container_ids: tuple[str, ...]  # containers removed with it: their rootfs can go now
    existed: bool


# --- containers ------------------------------------------------------------------------


@dataclass(frozen=True)
class CreateContainerRequest:
    id: str
    sandbox_id: str
    config_json: str
    image: ImageRecord
    image_ref: str
    rootfs: str  # the mounted overlay from storaged


@dataclass(frozen=True)
class ContainerRef:
    id: str


@dataclass(frozen=True)
class StopContainerRequest:
    id: str
    timeout: int  # seconds between the stop signal and SIGKILL


@dataclass(frozen=True)
class RemoveContainerResponse:
    existed: bool


@dataclass(frozen=True)
class ExecSyncRequest:
    id: str
    cmd: tuple[str, ...]
    timeout: int  # seconds; 0 = none


@dataclass(frozen=True)
class ExecSyncResponse:
    stdout: bytes
    stderr: bytes
    exit_code: int


@dataclass(frozen=True)
class UpdateResourcesRequest:
    id: str
    resources_json: str  # CRI LinuxContainerResources


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class StatsRequest:
    ids: tuple[str, ...] = ()  # empty: every container that has a cgroup


@dataclass(frozen=True)
class ContainerStats:
    id: str
    timestamp_ns: int
    cpu_usage_ns: int
    memory_working_set_bytes: int
    memory_usage_bytes: int
    memory_rss_bytes: int = 0
    memory_page_faults: int = 0
    memory_major_page_faults: int = 0
    pids: int = 0


@dataclass(frozen=True)
class StatsResponse:
    stats: tuple[ContainerStats, ...]


# --- the whole state, for a subscriber that may have missed events ------------------------


@dataclass(frozen=True)
class ListStateRequest:
    pass


@dataclass(frozen=True)
class ListStateResponse:
    sandboxes: tuple[SandboxRecord, ...]
    containers: tuple[ContainerRecord, ...]
    # Everything with a revision up to here is in this answer.
    revision: int = 0
    info: dict[str, str] = field(default_factory=dict)


CREATE_SANDBOX = Method("create_sandbox", CreateSandboxRequest, SandboxRecord)
START_SANDBOX = Method("start_sandbox", StartSandboxRequest, SandboxRecord)
STOP_SANDBOX = Method("stop_sandbox", SandboxRef, StopSandboxResponse)
REMOVE_SANDBOX = Method("remove_sandbox", SandboxRef, RemoveSandboxResponse)
CREATE_CONTAINER = Method("create_container", CreateContainerRequest, ContainerRecord)
START_CONTAINER = Method("start_container", ContainerRef, ContainerRecord)
STOP_CONTAINER = Method("stop_container", StopContainerRequest, ContainerRecord)
REMOVE_CONTAINER = Method("remove_container", ContainerRef, RemoveContainerResponse)
EXEC_SYNC = Method("exec_sync", ExecSyncRequest, ExecSyncResponse)
UPDATE_RESOURCES = Method("update_resources", UpdateResourcesRequest, ContainerRecord)
REOPEN_LOG = Method("reopen_log", ContainerRef, Done)
CONTAINER_STATS = Method("container_stats", StatsRequest, StatsResponse)
LIST_STATE = Method("list_state", ListStateRequest, ListStateResponse)
# The status API's pause/unpause (not CRI methods): FAILED_PRECONDITION in the wrong state.
PAUSE_CONTAINER = Method("pause_container", ContainerRef, ContainerRecord)
UNPAUSE_CONTAINER = Method("unpause_container", ContainerRef, ContainerRecord)
