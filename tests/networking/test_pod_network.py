"""Pods on real CNI networks through the CRI socket: addresses, pod-to-pod traffic, hostPort, no leaks.

Traffic goes only to 127.0.0.1 and to the pods' own addresses on the test's bridge.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import urllib.request

import grpc
import pytest

from shared.cri import api_pb2
from tests.networking.conftest import PodTestNetwork
from tests.support.pods import Pods, container_config, kill_9, sandbox_config
from tests.support.runtime import wait_for


def _pod_ip(pod: Pods, sid: str) -> str:
    return pod.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
                                               timeout=10).status.network.ip


def _web_pod(pod: Pods, sandbox: api_pb2.PodSandboxConfig | None = None) -> tuple[str, str]:
    sandbox = sandbox or sandbox_config()
    sid = pod.run_pod(sandbox)
    cid = pod.create(sid, container_config(pod.image, ["sh", "-c", "echo served > /index.html; "
                                                       "exec busybox httpd -f -p 8080 -h /"]), sandbox)
    pod.start(cid)
    return sid, cid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_pod_gets_an_address_from_the_network(pod: Pods, network: PodTestNetwork):
    sid = pod.run_pod()
    ip = _pod_ip(pod, sid)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(network.subnet)
    assert len(network.veths()) >= 1


def test_two_pods_reach_each_other_by_ip(pod: Pods):
    web_sid, _web = _web_pod(pod)
    _sid, client = pod.run_container(["sleep", "3600"])
    ip = _pod_ip(pod, web_sid)
    wait_for(lambda: pod.exec(client, ["wget", "-q", "-O-", f"http://{ip}:8080/index.html"]).stdout == b"served\n",
             20, "the web pod to answer the other pod")


def test_a_host_port_answers_on_localhost(pod: Pods):
    port = _free_port()
    sandbox = sandbox_config()
    sandbox.port_mappings.append(api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=8080, host_port=port))
    _web_pod(pod, sandbox)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as reply:
                return reply.read() == b"served\n"
        except OSError:
            return False

    wait_for(answers, 20, f"127.0.0.1:{port} to answer")


def test_stopping_a_pod_releases_its_address_veth_and_port_chains(pod: Pods, network: PodTestNetwork):
    before = set(network.veths())
    port = _free_port()
    sandbox = sandbox_config()
    sandbox.port_mappings.append(api_pb2.PortMapping(protocol=api_pb2.TCP, container_port=8080, host_port=port))
    sid, _cid = _web_pod(pod, sandbox)
    assert set(network.veths()) - before
    assert str(port) in _nat_rules()
    pod.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=30)
    assert set(network.veths()) == before
    assert str(port) not in _nat_rules()
    pod.client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=30)


def test_netd_killed_between_add_and_del_leaves_nothing_once_the_pod_is_removed(pod: Pods, network: PodTestNetwork):
    leases_before, veths_before = set(network.leases()), set(network.veths())
    sid = pod.run_pod()
    assert set(network.leases()) - leases_before
    kill_9(pod, "netd")
    pod.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=30)
    pod.client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=30)
    assert set(network.leases()) == leases_before
    assert set(network.veths()) == veths_before
    assert not (pod.run.run_dir / "netns" / sid).exists()


def test_dns_options_land_in_resolv_conf(pod: Pods):
    dns = api_pb2.DNSConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"], options=["ndots:5"])
    sandbox = sandbox_config(dns=dns)
    sid = pod.run_pod(sandbox)
    cid = pod.create(sid, container_config(pod.image, ["sleep", "3600"]), sandbox)
    pod.start(cid)
    resolv = pod.exec(cid, ["cat", "/etc/resolv.conf"]).stdout.decode()
    assert "nameserver 10.96.0.10" in resolv and "ndots:5" in resolv


def test_a_host_network_pod_skips_cni(pod: Pods, network: PodTestNetwork):
    leases = set(network.leases())
    sid = pod.run_pod(sandbox_config(host_network=True))
    assert _pod_ip(pod, sid) == ""
    assert set(network.leases()) == leases


def _nat_rules() -> str:
    return subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout


@pytest.mark.usefixtures("pod")
def test_a_broken_network_config_is_a_clear_error(pods: Pods):
    broken = pods.run.cni_dir / "00-broken.conflist"
    broken.write_text('{"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "no-such-plugin"}]}')
    try:
        wait_for(lambda: not pods.run.conditions()["NetworkReady"].status, 15, "NetworkReady to turn false")
        reason = pods.run.conditions()["NetworkReady"]
        assert "no-such-plugin" in reason.message
        with pytest.raises(grpc.RpcError) as err:
            pods.run_pod()
        assert "no-such-plugin" in err.value.details()
    finally:
        broken.unlink()
    wait_for(lambda: pods.run.conditions()["NetworkReady"].status, 15, "NetworkReady to turn true again")


@pytest.mark.usefixtures("pod")
def test_network_ready_follows_the_config_dir_without_a_restart(pods: Pods):
    conf = pods.run.cni_dir / "10-test.conflist"
    kept = conf.read_text()
    conf.unlink()
    try:
        wait_for(lambda: not pods.run.conditions()["NetworkReady"].status, 15, "NetworkReady to turn false")
        assert pods.run.conditions()["NetworkReady"].reason == "NetworkPluginNotReady"
    finally:
        conf.write_text(kept)
    wait_for(lambda: pods.run.conditions()["NetworkReady"].status, 15, "NetworkReady to turn true when it appears")
