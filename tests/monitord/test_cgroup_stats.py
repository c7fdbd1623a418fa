"""Container usage read from a cgroup: v1 as this host has it, v2 as a unified host has it.

This host binds cpu, memory and pids to cgroup v1, so no cgroup2 tree here can hold a memory
controller: the v2 case reads a tree laid out with the kernel's file formats (cgroup-v2.rst).
The v1 case is also covered end to end by tests/pods/test_status_and_stats.py.
"""

from __future__ import annotations

from pathlib import Path

from services.monitord.cgroup_stats import cgroup_relative_path, read_stats
from shared.cgroup_hierarchy import Hierarchy
from shared.schema.monitord import ContainerStats

V2_CPU_STAT = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
V2_MEMORY_STAT = ("anon 4096000\nfile 2048000\nkernel 12288\nshmem 0\nactive_anon 4000000\ninactive_anon 96000\n"
                  "active_file 1048000\ninactive_file 1000000\npgfault 321\npgmajfault 7\n")
V1_MEMORY_STAT = ("cache 2048000\nrss 4096000\ninactive_file 1000000\npgfault 321\npgmajfault 7\n"
                  "total_cache 3048000\ntotal_rss 5096000\ntotal_inactive_file 1500000\ntotal_pgfault 421\n"
                  "total_pgmajfault 9\n")


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _figures(stats: ContainerStats | None) -> tuple[int, ...]:
    assert stats is not None
    return (stats.cpu_usage_ns, stats.memory_usage_bytes, stats.memory_working_set_bytes, stats.memory_rss_bytes,
            stats.memory_page_faults, stats.memory_major_page_faults, stats.pids)


def test_v2_usage_is_read_from_the_unified_cgroup_as_cadvisor_reads_it(tmp_path: Path) -> None:
    _write(tmp_path / "kubepods.slice" / "kubepods-pod1.slice" / "cri-abc.scope", {
        "cpu.stat": V2_CPU_STAT, "memory.current": "6500000\n", "memory.stat": V2_MEMORY_STAT,
        "pids.current": "3\n"})
    stats = read_stats("abc", "kubepods-pod1.slice:cri:abc", Hierarchy(tmp_path, unified=True))
    # cpu from usage_usec; working set = current - inactive_file; rss = anon
    assert _figures(stats) == (1_500_000, 6_500_000, 5_500_000, 4_096_000, 321, 7, 3)


def test_v1_usage_counts_a_cgroups_children_through_the_total_keys(tmp_path: Path) -> None:
    relative = "criplex/pod/ctr"
    _write(tmp_path / "cpuacct" / relative, {"cpuacct.usage": "2500000\n"})
    _write(tmp_path / "memory" / relative, {"memory.usage_in_bytes": "7000000\n", "memory.stat": V1_MEMORY_STAT})
    _write(tmp_path / "pids" / relative, {"pids.current": "2\n"})
    stats = read_stats("ctr", "/criplex/pod/ctr", Hierarchy(tmp_path, unified=False))
    assert _figures(stats) == (2_500_000, 7_000_000, 5_500_000, 5_096_000, 421, 9, 2)


def test_a_container_whose_cgroup_is_gone_or_lacks_a_controller_has_no_stats(tmp_path: Path) -> None:
    assert read_stats("gone", "/criplex/gone", Hierarchy(tmp_path, unified=True)) is None
    assert read_stats("gone", "/criplex/gone", Hierarchy(tmp_path, unified=False)) is None
    # A v2 cgroup whose parent did not delegate memory has cpu.stat but no memory.current.
    _write(tmp_path / "criplex" / "nomem", {"cpu.stat": V2_CPU_STAT})
    assert read_stats("nomem", "/criplex/nomem", Hierarchy(tmp_path, unified=True)) is None


def test_a_v2_cgroup_without_the_pids_controller_reports_zero_pids(tmp_path: Path) -> None:
    _write(tmp_path / "criplex" / "c", {"cpu.stat": V2_CPU_STAT, "memory.current": "100\n",
                                        "memory.stat": V2_MEMORY_STAT})
    stats = read_stats("c", "/criplex/c", Hierarchy(tmp_path, unified=True))
    assert stats is not None and stats.pids == 0 and stats.memory_working_set_bytes == 0


def test_systemd_cgroup_paths_name_the_scope_inside_its_nested_slices() -> None:
    assert cgroup_relative_path("kubepods-burstable-pod1.slice:cri-containerd:abc") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope")
    assert cgroup_relative_path("-.slice:crio:abc") == "/crio-abc.scope"
    assert cgroup_relative_path("/kubepods/pod1/abc/") == "/kubepods/pod1/abc"
