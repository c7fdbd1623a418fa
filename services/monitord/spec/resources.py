"""CRI LinuxContainerResources -> OCI `linux.resources`, the OOM score and the cgroup path.

`linux_resources` is also what `runc update` is fed, so it only emits what was set: a zero
CRI field means "not specified", and leaving it out keeps the cgroup's current value.
"""

from __future__ import annotations

from typing import Any

from shared.cri import api_pb2
from shared.errors import InvalidArgument


def linux_resources(
    res: api_pb2.LinuxContainerResources, *, cgroup_v2: bool = False, swap_accounting: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if res.memory_limit_in_bytes:
        memory["limit"] = res.memory_limit_in_bytes
        if swap_accounting:
            # Without an explicit swap limit, memory+swap = memory: the container gets no swap,
            # as the kubelet expects when it does not manage swap.
            memory["swap"] = res.memory_swap_limit_in_bytes or res.memory_limit_in_bytes
    elif res.memory_swap_limit_in_bytes and swap_accounting:
        memory["swap"] = res.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    hugepages = [{"pageSize": h.page_size, "limit": h.limit} for h in res.hugepage_limits]
    if hugepages:
        out["hugepageLimits"] = hugepages
    # `unified` writes cgroup v2 files by name; on a v1 host there is nothing to write them to.
    if res.unified and cgroup_v2:
        out["unified"] = dict(res.unified)
    return out


def oom_score_adj(res: api_pb2.LinuxContainerResources, minimum: int) -> int:
    """The kubelet's value, raised to what this host lets root set (lowering it needs
    CAP_SYS_RESOURCE); never a reason to fail a container."""
    return max(res.oom_score_adj, minimum)


def cgroups_path(driver: str, cgroup_parent: str, default_parent: str, container_id: str) -> str:
    parent = cgroup_parent or default_parent
    if driver == "systemd":
        # runc's systemd form is "slice:prefix:name"; a cgroupfs-style default does not name a slice.
        slice_name = parent if parent.endswith(".slice") else "system.slice"
        return f"{slice_name}:criplex:{container_id}"
    if driver != "cgroupfs":
        raise InvalidArgument(f"unknown cgroup driver {driver!r}")
    if not parent.startswith("/"):
        parent = "/" + parent
    return f"{parent.rstrip('/')}/criplex-{container_id}"
