"""What the OCI runtime spec of a container is generated from, and what the generation returns.

`services.monitord.spec.generate(SpecInputs) -> GeneratedSpec` is pure apart from reading
the container's own /etc/passwd and /etc/group (never through a symlink that leaves the
rootfs) and the configured hooks directories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.cri import api_pb2
from shared.schema.imaged import ImageRecord
from shared.schema.monitord import ContainerUser, SandboxRecord


@dataclass(frozen=True)
class HostFacts:
    """What the host and configuration allow; read once at monitord's start."""

    bounding_capabilities: frozenset[str]  # e.g. {"CAP_CHOWN", ...}: what "privileged" grants
    cgroup_driver: str = "cgroupfs"  # or "systemd"
    default_cgroup_parent: str = "/criplex"
    hooks_dirs: tuple[str, ...] = ("/usr/share/containers/oci/hooks.d", "/etc/containers/oci/hooks.d")
    seccomp_profile: dict[str, Any] | None = None  # the RuntimeDefault profile; None = criplex's built-in
    seccomp_localhost_root: str = "/var/lib/kubelet/seccomp"
    cdi_dirs: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
    oom_score_adj_min: int = 0  # lowest value root may set here (no CAP_SYS_RESOURCE: the current one)
    cgroup_v2: bool = False  # unified hierarchy only: CRI `unified` resources apply
    swap_accounting: bool = True  # memory.memsw.* exists (v1) / memory.swap.max (v2)
    runtime_mount_options: frozenset[str] | None = None  # `runc features` mountOptions; None = not probed


@dataclass(frozen=True)
class SpecInputs:
    container_id: str
    sandbox: SandboxRecord
    sandbox_config: api_pb2.PodSandboxConfig
    config: api_pb2.ContainerConfig
    image: ImageRecord
    rootfs: str  # the mounted overlay
    host: HostFacts
    extra_annotations: dict[str, str] = field(default_factory=dict)
    target_pid: int = 0  # the target container's pid, for PID namespace mode TARGET


@dataclass(frozen=True)
class GeneratedSpec:
    spec: dict[str, Any]  # the OCI runtime spec (config.json)
    user: ContainerUser
    stop_signal: str  # e.g. "SIGTERM"
