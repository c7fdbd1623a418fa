"""What a pod's config gives its containers: DNS, sysctls, host namespaces, a shared PID namespace."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.pods import Pods, container_config, sandbox_config


def _run(pod: Pods, sandbox: api_pb2.PodSandboxConfig, command: list[str] | None = None,
         name: str = "ctr") -> str:
    sid = pod.run_pod(sandbox)
    cid = pod.create(sid, container_config(pod.image, command or ["sleep", "3600"], name=name), sandbox)
    pod.start(cid)
    return cid


def test_dns_config_lands_in_resolv_conf(pod: Pods):
    dns = api_pb2.DNSConfig(servers=["10.96.0.10"], searches=["ns.svc.cluster.local", "svc.cluster.local"],
                            options=["ndots:5"])
    cid = _run(pod, sandbox_config(dns=dns))
    resolv = pod.exec(cid, ["cat", "/etc/resolv.conf"]).stdout.decode()
    assert "nameserver 10.96.0.10" in resolv
    assert "search ns.svc.cluster.local svc.cluster.local" in resolv
    assert "options ndots:5" in resolv


def test_hosts_file_names_the_pod(pod: Pods):
    cid = _run(pod, sandbox_config(hostname="web-0"))
    hosts = pod.exec(cid, ["cat", "/etc/hosts"]).stdout.decode()
    assert "localhost" in hosts
    assert pod.exec(cid, ["cat", "/etc/hostname"]).stdout.decode().strip() == "web-0"


def test_namespaced_sysctls_apply_inside_the_pod_only(pod: Pods):
    cid = _run(pod, sandbox_config(sysctls={"kernel.shm_rmid_forced": "1",
                                            "net.ipv4.ip_unprivileged_port_start": "1024"}))
    assert pod.exec(cid, ["cat", "/proc/sys/kernel/shm_rmid_forced"]).stdout == b"1\n"
    assert pod.exec(cid, ["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]).stdout == b"1024\n"
    assert Path("/proc/sys/kernel/shm_rmid_forced").read_text() == "0\n"


def test_a_node_wide_sysctl_is_refused(pod: Pods):
    with pytest.raises(grpc.RpcError) as err:
        pod.run_pod(sandbox_config(sysctls={"kernel.panic": "1"}))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kernel.panic" in err.value.details()


def test_host_network_pod_sees_the_hosts_interfaces_and_name(pod: Pods):
    cid = _run(pod, sandbox_config(host_network=True))
    host_links = {line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]}
    inside = pod.exec(cid, ["cat", "/proc/net/dev"]).stdout.decode()
    assert {line.split(":")[0].strip() for line in inside.splitlines()[2:]} == host_links
    assert pod.exec(cid, ["hostname"]).stdout.decode().strip() == socket.gethostname()


def test_containers_of_a_pod_share_ipc_and_shm(pod: Pods):
    sandbox = sandbox_config()
    sid = pod.run_pod(sandbox)
    first = pod.create(sid, container_config(pod.image, ["sleep", "3600"], name="a"), sandbox)
    second = pod.create(sid, container_config(pod.image, ["sleep", "3600"], name="b"), sandbox)
    pod.start(first)
    pod.start(second)
    assert pod.exec(first, ["sh", "-c", "echo shared > /dev/shm/x"]).exit_code == 0
    assert pod.exec(second, ["cat", "/dev/shm/x"]).stdout == b"shared\n"
    ns = [pod.exec(c, ["readlink", "/proc/self/ns/ipc"]).stdout for c in (first, second)]
    assert ns[0] == ns[1] and ns[0] != Path("/proc/self/ns/ipc").readlink().as_posix().encode() + b"\n"


def test_a_pod_sharing_its_pid_namespace_runs_an_infra_container(pod: Pods):
    sandbox = sandbox_config(pid=api_pb2.POD)
    sid = pod.run_pod(sandbox)
    first = pod.create(sid, container_config(pod.image, ["sleep", "1001"], name="a"), sandbox)
    second = pod.create(sid, container_config(pod.image, ["sleep", "1002"], name="b"), sandbox)
    pod.start(first)
    pod.start(second)
    processes = pod.exec(second, ["ps", "-o", "pid,args"]).stdout.decode()
    assert "sleep 1001" in processes and "sleep 1002" in processes
    assert "sleep 2147483647" in processes  # the pause stand-in, PID 1 of the pod
    listed = pod.client.runtime.ListContainers(api_pb2.ListContainersRequest(
        filter=api_pb2.ContainerFilter(pod_sandbox_id=sid)), timeout=10).containers
    assert sorted(c.id for c in listed) == sorted([first, second])  # the infra container is not listed


def test_host_pid_pod_sees_host_processes(pod: Pods):
    sandbox = sandbox_config(pid=api_pb2.NODE)
    cid = _run(pod, sandbox)
    assert pod.exec(cid, ["cat", "/proc/1/comm"]).stdout.decode().strip() == Path("/proc/1/comm").read_text().strip()
