"""The container's mounts: the standard kernel filesystems, the pod's shared files, and the
kubelet's volumes.

Image VOLUMEs are ignored, as CRI-O does with `image_volumes = "ignore"`: the kubelet mounts
what a pod needs, and an anonymous volume would outlive nothing useful here.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from shared.cri import api_pb2
from shared.errors import InvalidArgument
from shared.schema.monitord import SandboxRecord

_PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}
# How much each rootfs propagation lets through; the rootfs must be at least as open as its mounts.
_OPENNESS = {"rprivate": 0, "rslave": 1, "rshared": 2}

_SHM_OPTIONS = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
_POD_FILE_OPTIONS = ["rbind", "rprivate", "nosuid", "nodev", "noexec"]


def mount(destination: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": kind, "source": source, "options": options}


def default_mounts(sandbox: SandboxRecord, privileged: bool) -> list[dict[str, Any]]:
    """The kernel filesystems every container gets, as `runc spec` lays them out."""
    ro = [] if privileged else ["ro"]
    mounts = [
        mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                                                "gid=5"]),
        shm_mount(sandbox),
    ]
    # In the host's IPC namespace a fresh mqueue mount shows the host's queues, so no bind of
    # the host's /dev/mqueue is needed (many hosts have none mounted).
    mounts.append(mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]))
    mounts.append(mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", *ro]))
    mounts.append(mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", *ro]))
    return mounts


def shm_mount(sandbox: SandboxRecord) -> dict[str, Any]:
    if sandbox.shm_path:
        return mount("/dev/shm", "bind", sandbox.shm_path, ["rbind", "rprivate", "nosuid", "noexec", "nodev"])
    return mount("/dev/shm", "tmpfs", "shm", list(_SHM_OPTIONS))


@dataclass(frozen=True)
class VolumeMounts:
    mounts: list[dict[str, Any]]
    rootfs_propagation: str  # "" = leave the runtime's default


def cri_mounts(cri: list[api_pb2.Mount], rro_supported: bool) -> VolumeMounts:
    """The kubelet's volumes as bind mounts; the rootfs propagation they need."""
    mounts = []
    rootfs_propagation = ""
    # Parents before children, whatever order the kubelet listed them in.
    for m in sorted(cri, key=lambda m: posixpath.normpath(m.container_path or "/").count("/")):
        if not m.container_path or not m.host_path:
            raise InvalidArgument(f"mount needs a container and a host path: {m.host_path!r} -> {m.container_path!r}")
        if not posixpath.isabs(m.container_path):
            raise InvalidArgument(f"mount destination {m.container_path!r} is not absolute")
        propagation = _PROPAGATION.get(m.propagation)
        if propagation is None:
            raise InvalidArgument(f"unknown mount propagation {m.propagation} for {m.container_path}")
        options = ["rbind", propagation]
        if m.recursive_read_only:
            if not m.readonly:
                raise InvalidArgument(f"recursive read-only mount {m.container_path} must also be read-only")
            if propagation != "rprivate":
                raise InvalidArgument(f"recursive read-only mount {m.container_path} must use private propagation")
            if not rro_supported:
                raise InvalidArgument(f"recursive read-only mount {m.container_path}: the runtime does not support rro")
            options.append("rro")
        else:
            options.append("ro" if m.readonly else "rw")
        mounts.append(mount(m.container_path, "bind", m.host_path, options))
        if _OPENNESS[propagation] > _OPENNESS.get(rootfs_propagation, 0):
            rootfs_propagation = propagation
    return VolumeMounts(mounts, rootfs_propagation)


def pod_file_mounts(sandbox: SandboxRecord, taken: set[str], readonly_rootfs: bool) -> list[dict[str, Any]]:
    """/etc/hosts, /etc/resolv.conf and /etc/hostname from the pod, unless a volume already covers one."""
    options = [*_POD_FILE_OPTIONS, "ro"] if readonly_rootfs else list(_POD_FILE_OPTIONS)
    mounts = []
    for destination, source in (
        ("/etc/hosts", sandbox.hosts_path),
        ("/etc/resolv.conf", sandbox.resolv_path),
        ("/etc/hostname", sandbox.hostname_path),
    ):
        if source and destination not in taken:
            mounts.append(mount(destination, "bind", source, list(options)))
    return mounts


def has_bind_mounts(mounts: list[dict[str, Any]]) -> bool:
    return any(m["type"] == "bind" for m in mounts)
