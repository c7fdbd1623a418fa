"""A dual-stack network: the pod's IPv4 address first, its IPv6 one in additional_ips."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from shared.cri import api_pb2
from tests.pods.conftest import start_pods
from tests.support.fixtures import PushedImage
from tests.support.pods import Pods
from tests.support.registry import Registry

V4 = f"10.199.{secrets.randbelow(250) + 1}.0/24"
V6 = f"fd00:c1:{secrets.randbelow(0xffff):x}::/64"


@pytest.fixture(scope="module")
def dual_stack(registry: Registry, pushed_busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Pods]:
    bridge = f"cxd{secrets.token_hex(3)}"
    conflist = json.dumps({"cniVersion": "1.0.0", "name": f"net-{bridge}", "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipam": {
            "type": "host-local", "dataDir": str(tmp_path_factory.mktemp("ipam")),
            "ranges": [[{"subnet": V4}], [{"subnet": V6}]]}}]})
    try:
        yield from start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("containers"), cni_conflist=conflist)
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def test_a_dual_stack_pod_reports_both_addresses(dual_stack: Pods):
    sid = dual_stack.run_pod()
    try:
        network = dual_stack.client.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10).status.network
        assert ipaddress.ip_address(network.ip) in ipaddress.ip_network(V4)
        assert [ipaddress.ip_address(a.ip) in ipaddress.ip_network(V6) for a in network.additional_ips] == [True]
    finally:
        dual_stack.cleanup()
