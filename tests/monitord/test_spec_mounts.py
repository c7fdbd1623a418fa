"""Mounts, devices and resources of the generated spec."""

from __future__ import annotations

import pytest

from services.monitord.spec.devices import cri_devices, default_device_rules, device_permissions
from services.monitord.spec.mounts import cri_mounts, default_mounts, pod_file_mounts
from services.monitord.spec.resources import cgroups_path, linux_resources, oom_score_adj
from shared.cri import api_pb2
from shared.errors import InvalidArgument
from tests.monitord.spec_builders import sandbox


def _mount(path="/data", host="/srv/data", **fields):
    return api_pb2.Mount(container_path=path, host_path=host, **fields)


def _by_dest(mounts):
    return {m["destination"]: m for m in mounts}


def test_private_readonly_mount_is_an_rbind_with_rprivate_and_ro():
    volumes = cri_mounts([_mount(readonly=True)], rro_supported=True)
    assert volumes.mounts == [{"destination": "/data", "type": "bind", "source": "/srv/data",
                               "options": ["rbind", "rprivate", "ro"]}]
    assert volumes.rootfs_propagation == ""


@pytest.mark.parametrize(
    ("propagations", "option", "rootfs"),
    [
        ([api_pb2.PROPAGATION_HOST_TO_CONTAINER], "rslave", "rslave"),
        ([api_pb2.PROPAGATION_BIDIRECTIONAL], "rshared", "rshared"),
        ([api_pb2.PROPAGATION_BIDIRECTIONAL, api_pb2.PROPAGATION_HOST_TO_CONTAINER], "rshared", "rshared"),
    ],
)
def test_propagation_sets_the_mount_option_and_opens_the_rootfs_enough(propagations, option, rootfs):
    mounts = [_mount(f"/m{i}", propagation=p) for i, p in enumerate(propagations)]
    volumes = cri_mounts(mounts, rro_supported=True)
    assert option in volumes.mounts[0]["options"]
    assert volumes.rootfs_propagation == rootfs


def test_recursive_read_only_uses_rro():
    volumes = cri_mounts([_mount(readonly=True, recursive_read_only=True)], rro_supported=True)
    assert volumes.mounts[0]["options"] == ["rbind", "rprivate", "rro"]


def test_recursive_read_only_without_runtime_support_is_invalid():
    with pytest.raises(InvalidArgument, match="rro"):
        cri_mounts([_mount(readonly=True, recursive_read_only=True)], rro_supported=False)


def test_recursive_read_only_needs_readonly_and_private_propagation():
    with pytest.raises(InvalidArgument):
        cri_mounts([_mount(recursive_read_only=True)], rro_supported=True)
    with pytest.raises(InvalidArgument):
        cri_mounts([_mount(readonly=True, recursive_read_only=True,
                           propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER)], rro_supported=True)


def test_parent_mounts_come_before_their_children():
    volumes = cri_mounts([_mount("/a/b/c"), _mount("/a")], rro_supported=True)
    assert [m["destination"] for m in volumes.mounts] == ["/a", "/a/b/c"]


def test_relative_destination_is_invalid():
    with pytest.raises(InvalidArgument, match="absolute"):
        cri_mounts([_mount("data")], rro_supported=True)


def test_pod_files_are_bound_unless_a_volume_covers_them():
    box = sandbox(hosts_path="/p/hosts", resolv_path="/p/resolv", hostname_path="")
    mounts = _by_dest(pod_file_mounts(box, {"/etc/hosts"}, readonly_rootfs=False))
    assert set(mounts) == {"/etc/resolv.conf"}
    assert mounts["/etc/resolv.conf"]["source"] == "/p/resolv"
    assert "ro" not in mounts["/etc/resolv.conf"]["options"]


def test_pod_files_are_readonly_with_a_readonly_rootfs():
    mounts = pod_file_mounts(sandbox(hostname_path="/p/hostname"), set(), readonly_rootfs=True)
    assert "ro" in mounts[0]["options"]


def test_shm_binds_the_pods_tmpfs_or_gets_a_private_one():
    assert _by_dest(default_mounts(sandbox(shm_path="/p/shm"), False))["/dev/shm"]["source"] == "/p/shm"
    assert _by_dest(default_mounts(sandbox(), False))["/dev/shm"]["type"] == "tmpfs"


def test_sys_is_readonly_unless_privileged():
    assert "ro" in _by_dest(default_mounts(sandbox(), False))["/sys"]["options"]
    assert "ro" not in _by_dest(default_mounts(sandbox(), True))["/sys"]["options"]


def test_cri_device_is_resolved_by_stat_into_node_and_rule():
    nodes, rules = cri_devices([api_pb2.Device(host_path="/dev/null", container_path="/dev/mynull", permissions="rw")])
    assert nodes[0]["path"] == "/dev/mynull" and (nodes[0]["type"], nodes[0]["major"], nodes[0]["minor"]) == ("c", 1, 3)
    assert rules == [{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]


def test_missing_device_or_bad_permissions_are_invalid():
    with pytest.raises(InvalidArgument):
        cri_devices([api_pb2.Device(host_path="/dev/does-not-exist", container_path="/dev/x")])
    with pytest.raises(InvalidArgument):
        device_permissions("rwx")


def test_device_cgroup_denies_all_then_allows_the_standard_nodes():
    rules = default_device_rules()
    assert rules[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"} in rules


def test_resources_convert_only_what_is_set():
    res = api_pb2.LinuxContainerResources(cpu_shares=512, cpu_quota=50000, cpu_period=100000, cpuset_cpus="0",
                                          memory_limit_in_bytes=64 << 20)
    assert linux_resources(res) == {
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "memory": {"limit": 64 << 20, "swap": 64 << 20},
    }
    assert linux_resources(api_pb2.LinuxContainerResources()) == {}


def test_explicit_swap_limit_and_no_swap_accounting():
    res = api_pb2.LinuxContainerResources(memory_limit_in_bytes=100, memory_swap_limit_in_bytes=300)
    assert linux_resources(res)["memory"] == {"limit": 100, "swap": 300}
    assert linux_resources(res, swap_accounting=False)["memory"] == {"limit": 100}


def test_hugepages_and_unified_only_on_cgroup_v2():
    res = api_pb2.LinuxContainerResources(hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=4 << 20)],
                                          unified={"memory.high": "1000"})
    assert linux_resources(res)["hugepageLimits"] == [{"pageSize": "2MB", "limit": 4 << 20}]
    assert "unified" not in linux_resources(res)
    assert linux_resources(res, cgroup_v2=True)["unified"] == {"memory.high": "1000"}


@pytest.mark.parametrize(("wanted", "minimum", "expected"), [(-997, 0, 0), (-500, -1000, -500), (1000, 0, 1000),
                                                             (0, 100, 100)])
def test_oom_score_adj_is_clamped_up_never_failing(wanted, minimum, expected):
    assert oom_score_adj(api_pb2.LinuxContainerResources(oom_score_adj=wanted), minimum) == expected


def test_cgroups_path_for_both_drivers():
    assert cgroups_path("cgroupfs", "/kubepods/pod1", "/criplex", "c1") == "/kubepods/pod1/criplex-c1"
    assert cgroups_path("cgroupfs", "", "/criplex", "c1") == "/criplex/criplex-c1"
    assert cgroups_path("systemd", "kubepods-pod1.slice", "/criplex", "c1") == "kubepods-pod1.slice:criplex:c1"
    assert cgroups_path("systemd", "", "/criplex", "c1") == "system.slice:criplex:c1"
