"""netd with the real CNI plugins of /usr/lib/cni: bridge, host-local, portmap, bandwidth, loopback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from services.netd.cni_exec import PluginFailed
from shared.errors import FailedPrecondition
from shared.nsfs import is_pinned
from shared.schema.netd import NodeNetworkRequest, PortMapping, RemoveNetworkRequest
from tests.netd.cni_support import CniWorld, eventually, nsenter, running


@pytest.fixture
def world():
    cni = CniWorld()
    try:
        yield cni
    finally:
        asyncio.run(cni.cleanup())


def _addresses(netns: str, ifname: str = "eth0") -> list[str]:
    out = nsenter(netns, "ip", "-o", "addr", "show", "dev", ifname).stdout
    return [line.split()[3] for line in out.splitlines() if " inet " in line]


def _assert_gone(world: CniWorld, sandbox_id: str, netns: str) -> None:
    assert world.links_on_bridge() == []
    assert world.leases() == []
    assert world.nat_rules_of(sandbox_id) == []
    assert not os.path.lexists(netns)
    assert list((world.state_dir / "cni" / "results").iterdir()) == []


def test_add_gives_the_pod_an_address_on_a_veth_and_del_removes_veth_and_lease(world):
    world.standard()

    async def main():
        async with running(world.config) as netd:
            request = world.request()
            network = await netd.create_network(request)
            assert network.interface == "eth0"
            assert len(network.ips) == 1 and network.ips[0].startswith(f"10.199.{world.third_octet}.")
            assert _addresses(network.netns_path) == [f"{network.ips[0]}/24"]
            assert len(world.links_on_bridge()) == 1
            assert world.leases() == [network.ips[0]]
            assert (network.cni_network, len(network.cni_config)) == ("cxtest", 64)
            assert (await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))).existed
            _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def test_two_pods_on_the_bridge_reach_each_other(world):
    world.standard()
    site = world.base / "www"
    site.mkdir()
    (site / "index.html").write_text("hello from pod one\n")

    async def main():
        async with running(world.config) as netd:
            one = await netd.create_network(world.request())
            two = await netd.create_network(world.request())
            server = subprocess.Popen(["nsenter", f"--net={one.netns_path}", "busybox", "httpd", "-f", "-p", "8080",
                                       "-h", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 10
                while True:
                    got = nsenter(two.netns_path, "busybox", "wget", "-q", "-O-",
                                  f"http://{one.ips[0]}:8080/")
                    if got.returncode == 0:
                        break
                    assert time.monotonic() < deadline, (got.returncode, got.stderr)
                    await asyncio.sleep(0.05)
                assert got.stdout == "hello from pod one\n"
            finally:
                server.kill()
                server.wait()
            for network in (one, two):
                await netd.remove_network(RemoveNetworkRequest(network.sandbox_id))
            assert world.links_on_bridge() == [] and world.leases() == []

    asyncio.run(main())


def test_del_after_a_netd_restart_uses_the_cached_result(world):
    world.standard()

    async def main():
        async with running(world.config) as netd:
            request = world.request(ports=(PortMapping("tcp", 80, _free_port()),))
            network = await netd.create_network(request)
            assert world.nat_rules_of(request.sandbox_id) != []
        # The conf dir changes meanwhile: DEL must use what the ADD used.
        (world.conf_dir / "10-test.conflist").unlink()
        async with running(world.config) as netd:
            assert (await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))).existed
        _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def test_del_works_when_the_netns_is_already_gone(world):
    world.standard()

    async def main():
        async with running(world.config) as netd:
            request = world.request()
            network = await netd.create_network(request)
            subprocess.run(["umount", network.netns_path], check=True)  # as a reboot clears /run
            await eventually(lambda: world.links_on_bridge() == [], "the veth to die with its namespace")
            assert not is_pinned(Path(network.netns_path))
            assert (await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))).existed
            assert not (await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))).existed
            # bridge 1.1.1 learns the addresses to un-masquerade from the pod's interface, so
            # without the namespace it leaves its MASQUERADE rule (a reboot, the usual way a
            # namespace vanishes, clears it with every other rule).
            masquerade = world.nat_rules_of(request.sandbox_id)
            assert all("CNI-" in rule and "HOSTPORT" not in rule for rule in masquerade)
            world.drop_nat_rules_of(request.sandbox_id)
            _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def test_a_missing_plugin_makes_the_network_not_ready_naming_it(world):
    world.write_conflist([world.bridge_plugin(), {"type": "no-such-plugin"}])

    async def main():
        async with running(world.config) as netd:
            readiness = netd.readiness()
            assert (readiness.ready, readiness.reason) == (False, "InvalidCNIConfig")
            assert "no-such-plugin" in readiness.message
            request = world.request()
            with pytest.raises(FailedPrecondition, match="no-such-plugin"):
                await netd.create_network(request)
            assert list(world.netns_dir.iterdir()) == []
            assert netd.networks.list() == []

    asyncio.run(main())


def test_a_failing_plugin_is_named_and_the_chain_is_rolled_back(world):
    # bridge and host-local succeed, then bandwidth refuses a rate it cannot apply.
    world.write_conflist([world.bridge_plugin(),
                          {"type": "portmap", "capabilities": {"portMappings": True}},
                          {"type": "bandwidth", "ingressRate": 1000, "ingressBurst": 0}])

    async def main():
        async with running(world.config) as netd:
            request = world.request(ports=(PortMapping("tcp", 80, _free_port()),))
            with pytest.raises(PluginFailed, match=r"CNI plugin bandwidth ADD failed: .+") as failure:
                await netd.create_network(request)
            assert failure.value.code.name == "INTERNAL"
            assert netd.networks.list() == []
            assert list(world.netns_dir.iterdir()) == []
            assert world.links_on_bridge() == [] and world.leases() == []
            assert world.nat_rules_of(request.sandbox_id) == []

    asyncio.run(main())


def test_an_invalid_subnet_fails_in_the_bridge_plugin_and_leaves_nothing(world):
    world.write_conflist([world.bridge_plugin(subnet="10.199.300.0/24")])

    async def main():
        async with running(world.config) as netd:
            request = world.request()
            with pytest.raises(PluginFailed, match="CNI plugin bridge ADD failed"):
                await netd.create_network(request)
            assert netd.networks.list() == [] and list(world.netns_dir.iterdir()) == []
            assert world.leases() == []

    asyncio.run(main())


def test_host_port_answers_on_the_host_loopback(world):
    world.standard()
    site = world.base / "www"
    site.mkdir()
    (site / "index.html").write_text("through the host port\n")
    host_port = _free_port()

    async def main():
        async with running(world.config) as netd:
            request = world.request(ports=(PortMapping("tcp", 8080, host_port),))
            network = await netd.create_network(request)
            assert any("--dport" in rule and str(host_port) in rule for rule in _nat_rules()), "no DNAT rule"
            server = subprocess.Popen(["nsenter", f"--net={network.netns_path}", "busybox", "httpd", "-f", "-p",
                                       "8080", "-h", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                body = await asyncio.to_thread(_http_get_with_retry, "127.0.0.1", host_port)
                assert body.endswith(b"through the host port\n")
            finally:
                server.kill()
                server.wait()
            await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
            assert not any(str(host_port) in rule for rule in _nat_rules())
            _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_older_config_versions_attach_and_detach(world, version):
    world.standard(version)

    async def main():
        async with running(world.config) as netd:
            request = world.request(ports=(PortMapping("tcp", 80, _free_port()),))
            network = await netd.create_network(request)
            assert len(network.ips) == 1 and network.ips[0].startswith("10.199.")
            cached = json.loads(next((world.state_dir / "cni" / "results").iterdir()).read_text())
            assert cached["result"]["cniVersion"] == version
            await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
            _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def test_check_passes_on_a_healthy_pod_and_fails_once_its_route_is_gone(world):
    # Not bandwidth: its 1.1.1 CHECK crashes when the pod has no limits.
    world.write_conflist([world.bridge_plugin(), {"type": "portmap", "capabilities": {"portMappings": True}}])

    async def main():
        async with running(world.config) as netd:
            request = world.request()
            network = await netd.create_network(request)
            await netd.cni.check(network)
            nsenter(network.netns_path, "ip", "route", "del", "default")
            with pytest.raises(PluginFailed, match="CNI plugin bridge CHECK failed"):
                await netd.cni.check(network)
            await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
            _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def test_readiness_is_false_for_a_broken_config_and_true_again_once_fixed(world):
    async def main():
        async with running(world.config) as netd:
            assert netd.readiness().reason == "NetworkPluginNotReady"
            path = world.conf_dir / "10-test.conflist"
            path.write_text("{not json")
            await eventually(lambda: netd.readiness().reason == "InvalidCNIConfig", "InvalidCNIConfig", 5)
            assert "not JSON" in netd.readiness().message
            world.standard()
            await eventually(lambda: netd.readiness().ready, "NetworkReady once fixed", 5)
            assert netd.readiness().info == {"cni_config": "10-test.conflist", "cni_network": "cxtest"}

    asyncio.run(main())


def test_a_changed_config_applies_to_the_next_pod(world):
    world.standard()

    async def main():
        async with running(world.config) as netd:
            first = await netd.create_network(world.request())
            other = f"10.199.{(world.third_octet + 1) % 250}.0/24"
            world.write_conflist([world.bridge_plugin(subnet=other, bridge=world.other_bridge())])
            await eventually(lambda: netd.cni_config.network is not None
                             and netd.cni_config.network.digest != first.cni_config, "the new config", 5)
            second = await netd.create_network(world.request())
            assert second.ips[0].startswith(other.rsplit(".", 1)[0] + ".")
            assert second.cni_config != first.cni_config
            for network in (first, second):
                await netd.remove_network(RemoveNetworkRequest(network.sandbox_id))
            assert world.links_on_bridge() == [] and world.leases() == []

    asyncio.run(main())


def test_the_pod_cidr_becomes_the_ip_range_of_a_config_without_a_subnet(world):
    plugin = world.bridge_plugin(subnet=None, capabilities={"ipRanges": True})
    world.write_conflist([plugin])
    cidr = f"10.198.{world.third_octet}.0/24"

    async def main():
        async with running(world.config) as netd:
            await netd.set_node_network(NodeNetworkRequest(cidr))
        async with running(world.config) as netd:  # kept across a restart
            assert netd.node.pod_cidr == cidr
            request = world.request()
            network = await netd.create_network(request)
            assert network.ips[0].startswith(f"10.198.{world.third_octet}.")
            await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
            assert world.leases() == []

    asyncio.run(main())


def test_bandwidth_annotations_shape_the_pods_traffic(world):
    world.standard()

    async def main():
        async with running(world.config) as netd:
            request = world.request(annotations={"kubernetes.io/ingress-bandwidth": "10M",
                                                 "kubernetes.io/egress-bandwidth": "1M"})
            network = await netd.create_network(request)
            # Ingress is shaped on the host's end of the veth, egress through an ifb device.
            [host_end] = world.links_on_bridge()
            qdisc = subprocess.run(["tc", "qdisc", "show", "dev", host_end], capture_output=True, text=True).stdout
            assert "tbf" in qdisc and "10Mbit" in qdisc
            await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
            _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def test_an_add_a_crash_interrupted_is_undone_at_the_next_start(world):
    world.standard()

    async def main():
        async with running(world.config) as netd:
            request = world.request(ports=(PortMapping("tcp", 80, _free_port()),))
            network = await netd.create_network(request)
        # What a kill -9 between the chain's ADD and the cached result leaves: the attempt only.
        [cache] = (world.state_dir / "cni" / "results").iterdir()
        attempt = json.loads(cache.read_text())
        attempt["result"] = None
        cache.write_text(json.dumps(attempt))
        async with running(world.config) as netd:
            assert world.leases() == [] and world.links_on_bridge() == []
            assert world.nat_rules_of(request.sandbox_id) == []  # portmap's DEL got the pod's portMappings
            assert [n.sandbox_id for n in netd.networks.list()] == [request.sandbox_id]
            again = await netd.create_network(request)  # a retried create attaches anew
            assert again.ips and world.leases() == [again.ips[0]]
            await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
        _assert_gone(world, request.sandbox_id, network.netns_path)

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _nat_rules() -> list[str]:
    out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _http_get_with_retry(host: str, port: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                if b" 200 " in data.split(b"\r\n", 1)[0]:
                    return data
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing answered on {host}:{port}"
        time.sleep(0.05)

