"""The container's namespaces: its own mount, PID (unless shared) and cgroup namespaces;
the pod's network, IPC and UTS namespaces joined through their bind-mounted nsfs files.

An OCI namespace left out of the list means the runtime's own, i.e. the host's.
"""

from __future__ import annotations

import os

from shared.cri import api_pb2
from shared.errors import FailedPrecondition, InvalidArgument
from shared.schema.monitord import SandboxRecord


def container_namespaces(pid_mode: int, sandbox: SandboxRecord, target_pid: int = 0) -> list[dict[str, str]]:
    namespaces: list[dict[str, str]] = [{"type": "mount"}]
    pid = pid_namespace(pid_mode, sandbox, target_pid)
    if pid is not None:
        namespaces.append(pid)
    for kind, path in (("network", sandbox.netns_path), ("ipc", sandbox.ipc_path), ("uts", sandbox.uts_path)):
        if path:
            namespaces.append({"type": kind, "path": path})
    # runc supports cgroup namespaces on v1 and v2 alike; the container sees its own cgroup as "/".
    namespaces.append({"type": "cgroup"})
    return namespaces


def pid_namespace(pid_mode: int, sandbox: SandboxRecord, target_pid: int) -> dict[str, str] | None:
    if pid_mode == api_pb2.NODE:
        return None
    if pid_mode == api_pb2.POD:
        if sandbox.infra_pid:
            return {"type": "pid", "path": f"/proc/{sandbox.infra_pid}/ns/pid"}
        if sandbox.infra_container_id:
            raise FailedPrecondition(f"pod {sandbox.id} shares its PID namespace but its infra container is not up")
        # POD is the proto's zero value: a config that never set the option (crictl's
        # minimal ones) lands here, and a pod without an infra container has no shared
        # namespace to join.
        return {"type": "pid"}
    if pid_mode == api_pb2.TARGET:
        if target_pid <= 0:
            raise InvalidArgument("PID namespace mode TARGET needs a running target container")
        return {"type": "pid", "path": f"/proc/{target_pid}/ns/pid"}
    return {"type": "pid"}


def pod_hostname(config: api_pb2.PodSandboxConfig) -> str:
    """The pod's hostname: its config's, else the node's, as with containerd and CRI-O.

    Never the pod's name: critest's (and many real) pod names are longer than the 64
    bytes a hostname may have.
    """
    return config.hostname or os.uname().nodename
