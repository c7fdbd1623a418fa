"""Capabilities, namespaces and sysctls of the generated spec."""

from __future__ import annotations

import pytest

from services.monitord.spec.capabilities import DEFAULT_CAPABILITIES, capability_name, container_capabilities
from services.monitord.spec.namespaces import container_namespaces
from services.monitord.spec.sysctls import container_sysctls
from shared.cri import api_pb2
from shared.errors import FailedPrecondition, InvalidArgument
from tests.monitord.spec_builders import HOST_BOUNDING, sandbox


def _caps(add=(), drop=(), ambient=(), privileged=False):
    request = api_pb2.Capability(add_capabilities=add, drop_capabilities=drop, add_ambient_capabilities=ambient)
    return container_capabilities(request, privileged, HOST_BOUNDING)


def test_default_set_is_crio_default_in_bounding_effective_permitted_only():
    caps = _caps()
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == list(DEFAULT_CAPABILITIES)
    assert "inheritable" not in caps and "ambient" not in caps


@pytest.mark.parametrize("name", ["NET_ADMIN", "CAP_NET_ADMIN", "net_admin"])
def test_added_capability_accepts_names_with_or_without_prefix(name):
    assert "CAP_NET_ADMIN" in _caps(add=[name])["effective"]


def test_dropped_capability_is_removed_everywhere():
    caps = _caps(drop=["KILL", "CAP_CHOWN"])
    for kind in ("bounding", "effective", "permitted"):
        assert "CAP_KILL" not in caps[kind] and "CAP_CHOWN" not in caps[kind]


def test_drop_wins_over_add_of_the_same_capability():
    assert "CAP_NET_RAW" not in _caps(add=["NET_RAW"], drop=["NET_RAW"])["bounding"]


def test_add_all_means_the_hosts_bounding_set_not_every_capability():
    caps = _caps(add=["ALL"])
    assert set(caps["bounding"]) == HOST_BOUNDING
    assert "CAP_SYS_RESOURCE" not in caps["bounding"]


def test_drop_all_then_add_keeps_only_the_added():
    assert _caps(add=["NET_BIND_SERVICE"], drop=["ALL"])["bounding"] == ["CAP_NET_BIND_SERVICE"]


def test_privileged_gets_exactly_the_bounding_set():
    caps = _caps(privileged=True, drop=["ALL"])
    assert set(caps["bounding"]) == set(caps["effective"]) == set(caps["permitted"]) == HOST_BOUNDING


def test_adding_a_capability_the_host_lacks_is_invalid():
    with pytest.raises(InvalidArgument, match="CAP_SYS_RESOURCE"):
        _caps(add=["SYS_RESOURCE"])


def test_unknown_capability_name_is_invalid():
    with pytest.raises(InvalidArgument, match="CAP_FLY"):
        capability_name("CAP_FLY")


def test_ambient_capability_is_also_inheritable_and_permitted():
    caps = _caps(ambient=["NET_RAW"])
    assert caps["ambient"] == caps["inheritable"] == ["CAP_NET_RAW"]
    assert "CAP_NET_RAW" in caps["permitted"] and "CAP_NET_RAW" in caps["bounding"]


POD = sandbox(netns_path="/run/netns/p", ipc_path="/run/ipc/p", uts_path="/run/uts/p", infra_pid=4242)


def _types(namespaces):
    return {n["type"]: n.get("path") for n in namespaces}


def test_pod_namespaces_are_joined_by_path_and_mount_pid_cgroup_are_new():
    ns = _types(container_namespaces(api_pb2.CONTAINER, POD))
    assert ns == {"mount": None, "pid": None, "network": "/run/netns/p", "ipc": "/run/ipc/p",
                  "uts": "/run/uts/p", "cgroup": None}


def test_host_namespaces_are_omitted():
    ns = _types(container_namespaces(api_pb2.NODE, sandbox()))
    assert set(ns) == {"mount", "cgroup"}


def test_pod_pid_mode_joins_the_infra_container():
    assert _types(container_namespaces(api_pb2.POD, POD))["pid"] == "/proc/4242/ns/pid"


def test_pod_pid_mode_without_infra_container_gets_its_own():
    assert _types(container_namespaces(api_pb2.POD, sandbox()))["pid"] is None


def test_pod_pid_mode_with_a_stopped_infra_container_fails():
    with pytest.raises(FailedPrecondition):
        container_namespaces(api_pb2.POD, sandbox(infra_container_id="infra"))


def test_target_pid_mode_joins_the_target():
    assert _types(container_namespaces(api_pb2.TARGET, POD, target_pid=99))["pid"] == "/proc/99/ns/pid"


def test_target_pid_mode_without_a_target_is_invalid():
    with pytest.raises(InvalidArgument):
        container_namespaces(api_pb2.TARGET, POD)


def test_namespaced_sysctls_pass_when_the_pod_owns_the_namespace():
    wanted = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1", "kernel.sem": "1 2 3 4", "fs.mqueue.msg_max": "9",
              "kernel.msgmax": "5"}
    assert container_sysctls(wanted, POD) == wanted


def test_slash_separated_sysctl_is_converted():
    assert container_sysctls({"net/ipv4/conf/eth0.100/forwarding": "1"}, POD) == {
        "net.ipv4.conf.eth0/100.forwarding": "1"}


@pytest.mark.parametrize("key", ["kernel.panic", "vm.swappiness", "fs.file-max", "user.max_user_namespaces"])
def test_node_wide_sysctl_is_invalid_and_named(key):
    with pytest.raises(InvalidArgument, match=key):
        container_sysctls({key: "1"}, POD)


def test_net_sysctl_on_a_host_network_pod_is_invalid():
    with pytest.raises(InvalidArgument, match="net"):
        container_sysctls({"net.core.somaxconn": "1024"}, sandbox(ipc_path="/x"))


def test_ipc_sysctl_on_a_host_ipc_pod_is_invalid():
    with pytest.raises(InvalidArgument, match="ipc"):
        container_sysctls({"kernel.shmmax": "1"}, sandbox(netns_path="/x"))
