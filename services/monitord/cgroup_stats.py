"""Container usage from cgroup v1 files, the way the kubelet's summary wants it.

Working set = usage - inactive file cache, as cAdvisor computes it: page cache the kernel can
drop at once does not count against a container.
"""

from __future__ import annotations

import time
from pathlib import Path

from shared.schema.monitord import ContainerStats

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_relative_path(cgroups_path: str) -> str:
    """The OCI `linux.cgroupsPath` as a path below each v1 controller's mount.

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


def _memory_stat(path: Path) -> dict[str, int]:
    stat = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat[key] = int(value)
    return stat


def read_stats(container_id: str, cgroups_path: str, root: Path = CGROUP_ROOT) -> ContainerStats | None:
    """None when the container has no cgroup (any more)."""
    relative = cgroup_relative_path(cgroups_path).lstrip("/")
    memory_dir = root / "memory" / relative
    try:
        cpu = _read_int(root / "cpuacct" / relative / "cpuacct.usage")
        usage = _read_int(memory_dir / "memory.usage_in_bytes")
        stat = _memory_stat(memory_dir / "memory.stat")
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        pids = _read_int(root / "pids" / relative / "pids.current")
    except (FileNotFoundError, NotADirectoryError):
        pids = 0
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    return ContainerStats(
        id=container_id,
        timestamp_ns=time.time_ns(),
        cpu_usage_ns=cpu,
        memory_working_set_bytes=max(usage - inactive, 0),
        memory_usage_bytes=usage,
        memory_rss_bytes=stat.get("total_rss", stat.get("rss", 0)),
        memory_page_faults=stat.get("total_pgfault", stat.get("pgfault", 0)),
        memory_major_page_faults=stat.get("total_pgmajfault", stat.get("pgmajfault", 0)),
        pids=pids,
    )
