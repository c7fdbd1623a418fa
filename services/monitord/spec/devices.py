"""Device nodes and the device cgroup.

The device cgroup denies everything, then allows the nodes every container has (the same
ones runc creates: null, zero, full, random, urandom, tty, ptmx and the pts), mknod of any
node (creating one is harmless while opening it is denied), and each device given to the
container.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from shared.cri import api_pb2
from shared.errors import InvalidArgument

_STANDARD_NODES = (
    ("c", 1, 3),  # null
    ("c", 1, 5),  # zero
    ("c", 1, 7),  # full
    ("c", 1, 8),  # random
    ("c", 1, 9),  # urandom
    ("c", 5, 0),  # tty
    ("c", 5, 2),  # ptmx
    ("c", 136, None),  # pts/*
)
# What /dev on the host holds that is not a device to hand a privileged container.
_HOST_DEV_SKIP = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/.udev", "/dev/.lxc", "/dev/.lxd-mounts")


def default_device_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    rules.append({"allow": True, "type": "c", "access": "m"})
    rules.append({"allow": True, "type": "b", "access": "m"})
    for kind, major, minor in _STANDARD_NODES:
        rule: dict[str, Any] = {"allow": True, "type": kind, "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        rules.append(rule)
    return rules


@dataclass(frozen=True)
class DeviceNode:
    path: str  # in the container
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int  # permission bits
    uid: int
    gid: int

    def oci(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.kind,
            "major": self.major,
            "minor": self.minor,
            "fileMode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
        }

    def rule(self, access: str) -> dict[str, Any]:
        return {"allow": True, "type": self.kind, "major": self.major, "minor": self.minor, "access": access}


def stat_device(host_path: str, container_path: str) -> DeviceNode | None:
    """The device at host_path, or None when it is not a char or block device."""
    try:
        info = os.stat(host_path)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"device {host_path} does not exist") from exc
    if stat.S_ISCHR(info.st_mode):
        kind = "c"
    elif stat.S_ISBLK(info.st_mode):
        kind = "b"
    else:
        return None
    return DeviceNode(
        container_path,
        kind,
        os.major(info.st_rdev),
        os.minor(info.st_rdev),
        stat.S_IMODE(info.st_mode),
        info.st_uid,
        info.st_gid,
    )


def device_permissions(permissions: str) -> str:
    access = permissions or "rwm"
    if not set(access) <= set("rwm") or len(set(access)) != len(access):
        raise InvalidArgument(f"device permissions {permissions!r} are not a combination of r, w and m")
    return access


def cri_devices(devices: list[api_pb2.Device]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(linux.devices, device cgroup rules) for the kubelet's devices; a directory brings every
    device below it, as CRI-O does."""
    nodes: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for device in devices:
        access = device_permissions(device.permissions)
        container_path = device.container_path or device.host_path
        for node in _walk_devices(device.host_path, container_path):
            nodes.append(node.oci())
            rules.append(node.rule(access))
    return nodes, rules


def _walk_devices(host_path: str, container_path: str) -> list[DeviceNode]:
    if not os.path.isdir(host_path):
        node = stat_device(host_path, container_path)
        if node is None:
            raise InvalidArgument(f"{host_path} is not a device")
        return [node]
    found = []
    for directory, _, files in os.walk(host_path):
        for name in sorted(files):
            source = os.path.join(directory, name)
            node = stat_device(source, os.path.join(container_path, os.path.relpath(source, host_path)))
            if node is not None:
                found.append(node)
    return found


def host_devices() -> list[dict[str, Any]]:
    """Every device node of the host's /dev, for a privileged container."""
    nodes = []
    for directory, subdirs, files in os.walk("/dev"):
        subdirs[:] = [d for d in subdirs if os.path.join(directory, d) not in _HOST_DEV_SKIP]
        for name in sorted(files):
            path = os.path.join(directory, name)
            if path == "/dev/console" or os.path.islink(path):
                continue  # runc binds the console itself; symlinks are not nodes
            try:
                node = stat_device(path, path)
            except InvalidArgument:
                continue  # vanished while we walked
            if node is not None:
                nodes.append(node.oci())
    return nodes
