"""UpdateRuntimeConfig: the kubelet's pod CIDR becomes the IP range of pods made after it.

The node's CNI config names no subnet and asks for the `ipRanges` capability, as configs
written for a kubelet-managed pod CIDR do; netd then hands host-local the CIDR the kubelet sent.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shared.cri import api_pb2
from tests.pods.conftest import start_pods
from tests.support.fixtures import PushedImage
from tests.support.pods import Pods
from tests.support.registry import Registry
from tests.support.runtime import wait_for

BRIDGE = f"cxc{secrets.token_hex(3)}"
# One CIDR for the module: the bridge plugin gives the bridge the range's gateway address once,
# and a node's pod CIDR does not change under running pods.
CIDR = ipaddress.ip_network(f"10.198.{secrets.randbelow(250) + 1}.0/24")


def conflist(ipam_dir: Path) -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": f"net-{BRIDGE}",
        "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                     "capabilities": {"ipRanges": True},
                     "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "routes": [{"dst": "0.0.0.0/0"}]}}],
    })


@pytest.fixture(scope="module")
def pods(registry: Registry, pushed_busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    try:
        yield from start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("containers"),
                              cni_conflist=conflist(tmp_path_factory.mktemp("ipam")))
    finally:
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def update_pod_cidr(pods: Pods, cidr: str) -> None:
    pods.client.runtime.UpdateRuntimeConfig(api_pb2.UpdateRuntimeConfigRequest(
        runtime_config=api_pb2.RuntimeConfig(network_config=api_pb2.NetworkConfig(pod_cidr=cidr))), timeout=30)


def pod_ip(pods: Pods) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    sid = pods.run_pod()
    status = pods.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=30)
    return ipaddress.ip_address(status.status.network.ip)


def test_the_kubelets_pod_cidr_is_where_pods_get_their_addresses_even_after_netd_restarts(pods: Pods) -> None:
    try:
        update_pod_cidr(pods, str(CIDR))
        assert pod_ip(pods) in CIDR
        # The kubelet sends the CIDR once: netd keeps it.
        pods.run.supervisorctl("restart", "netd")
        wait_for(pods.run.ready, 30, "criplex ready again")
        assert pod_ip(pods) in CIDR
    finally:
        pods.cleanup()


def test_a_pod_cidr_that_is_not_a_cidr_is_invalid_and_changes_nothing(pods: Pods) -> None:
    try:
        update_pod_cidr(pods, str(CIDR))
        with pytest.raises(grpc.RpcError) as caught:
            update_pod_cidr(pods, "10.1.2.0/24,not-a-cidr")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not-a-cidr" in (caught.value.details() or "")
        assert pod_ip(pods) in CIDR
    finally:
        pods.cleanup()
