"""A criplex whose pods get real networks: Debian's bridge, host-local and portmap plugins.

Each module gets its own bridge, subnet and IPAM directory, so nothing it makes can be
confused with the host's own interfaces or another run's, and all of it is checked gone.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pods.conftest import start_pods
from tests.support.fixtures import PushedImage
from tests.support.pods import Pods
from tests.support.registry import Registry


@dataclass(frozen=True)
class PodTestNetwork:
    bridge: str
    subnet: str  # a /24
    ipam_dir: Path

    def conflist(self) -> str:
        return json.dumps({
            "cniVersion": "1.0.0", "name": f"net-{self.bridge}",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.ipam_dir),
                          "ranges": [[{"subnet": self.subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        })

    def leases(self) -> list[str]:
        """host-local's lease files (one per allocated address)."""
        net_dir = self.ipam_dir / f"net-{self.bridge}"
        if not net_dir.is_dir():
            return []
        return [p.name for p in net_dir.iterdir() if p.name[0].isdigit()]

    def veths(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True)
        return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodTestNetwork]:
    net = PodTestNetwork(bridge=f"cxt{secrets.token_hex(3)}", subnet=f"10.199.{secrets.randbelow(250) + 1}.0/24",
                      ipam_dir=tmp_path_factory.mktemp("ipam"))
    try:
        yield net
    finally:
        subprocess.run(["ip", "link", "del", net.bridge], capture_output=True, check=False)


@pytest.fixture(scope="module")
def pods(registry: Registry, pushed_busybox: PushedImage, network: PodTestNetwork,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    yield from start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("containers"),
                          cni_conflist=network.conflist())


@pytest.fixture
def pod(pods: Pods) -> Iterator[Pods]:
    try:
        yield pods
    finally:
        pods.cleanup()
