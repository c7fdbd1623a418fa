"""Container usage from its cgroup (v1 or v2), the way the kubelet's summary wants it.

Working set = usage - inactive file cache, as cAdvisor computes it: page cache the kernel can
drop at once does not count against a container. On v2, cAdvisor's RSS is memory.stat's
`anon`, and CPU time comes from cpu.stat's `usage_usec`, which every cgroup has.
"""

from __future__ import annotations

import time
from pathlib import Path

from shared.cgroup_hierarchy import Hierarchy
from shared.schema.monitord import ContainerStats


def cgroup_relative_path(cgroups_path: str) -> str:
    """The OCI `linux.cgroupsPath` as a path below the cgroup2 mount or each v1 controller's mount.

    cgroupfs gives a path; the systemd driver gives "slice:prefix:name", meaning the scope
    `<prefix>-<name>.scope` inside the slice's nested directories (a-b.slice lives in a.slice).
    """
    if ":" not in cgroups_path:
        return "/" + cgroups_path.strip("/")
    slice_name, prefix, name = cgroups_path.split(":", 2)
    parts = []
    if slice_name and slice_name != "-.slice":
        stem = slice_name.removesuffix(".slice")
        words = stem.split("-")
        parts = ["-".join(words[:i]) + ".slice" for i in range(1, len(words) + 1)]
    scope = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return "/" + "/".join([*parts, scope])


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _keyed(path: Path) -> dict[str, int]:
    """A flat keyed file (memory.stat, cpu.stat): "key value" lines."""
    stat = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[key] = int(value)
    return stat


def read_stats(container_id: str, cgroups_path: str, hierarchy: Hierarchy) -> ContainerStats | None:
    """None when the container has no cgroup (any more)."""
    relative = cgroup_relative_path(cgroups_path)
    try:
        if hierarchy.unified:
            directory = hierarchy.directory("", relative)
            cpu = _keyed(directory / "cpu.stat")["usage_usec"] * 1000
            usage = _read_int(directory / "memory.current")
            stat = _keyed(directory / "memory.stat")
            rss, inactive = stat.get("anon", 0), stat.get("inactive_file", 0)
            faults, major_faults = stat.get("pgfault", 0), stat.get("pgmajfault", 0)
        else:
            cpu = _read_int(hierarchy.directory("cpuacct", relative) / "cpuacct.usage")
            memory_dir = hierarchy.directory("memory", relative)
            usage = _read_int(memory_dir / "memory.usage_in_bytes")
            stat = _keyed(memory_dir / "memory.stat")
            # A cgroup with children reports them in the total_ keys; a leaf has the same in both.
            rss = stat.get("total_rss", stat.get("rss", 0))
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
            faults = stat.get("total_pgfault", stat.get("pgfault", 0))
            major_faults = stat.get("total_pgmajfault", stat.get("pgmajfault", 0))
    except (FileNotFoundError, NotADirectoryError, KeyError):
        return None
    try:
        pids = _read_int(hierarchy.directory("pids", relative) / "pids.current")
    except (FileNotFoundError, NotADirectoryError):
        pids = 0
    return ContainerStats(
        id=container_id,
        timestamp_ns=time.time_ns(),
        cpu_usage_ns=cpu,
        memory_working_set_bytes=max(usage - inactive, 0),
        memory_usage_bytes=usage,
        memory_rss_bytes=rss,
        memory_page_faults=faults,
        memory_major_page_faults=major_faults,
        pids=pids,
    )
