"""A throw-away CNI world for netd's tests: a bridge, subnet, conf dir, IPAM and cache dirs of its own.

Everything a test makes is removed by the fixture even when the test fails: the pods'
networks (DEL through netd's own cache), the netns pins, the bridge, the leases.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from services.netd.cni import CniRunner
from services.netd.service import NetdService
from shared.config import Config, load_config
from shared.daemon import DaemonContext
from shared.schema.netd import CreateNetworkRequest, PortMapping, RemoveNetworkRequest
from shared.tracing import Tracing
from shared.transport import EventPublisher
from tests.support.runtime import unmount_below


class CniWorld:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cxc-", dir="/tmp"))
        self.conf_dir = self.base / "cni"
        self.conf_dir.mkdir()
        self.ipam_dir = self.base / "ipam"
        self.bridge = "cxt" + secrets.token_hex(3)
        self.third_octet = secrets.randbelow(200) + 20
        self.subnet = f"10.199.{self.third_octet}.0/24"
        self.gateway_ip = f"10.199.{self.third_octet}.1"
        self.sandboxes: list[str] = []
        self.extra_bridges: list[str] = []
        (self.base / "criplex.toml").write_text(
            f'[paths]\nrun_dir = "{self.base}/run"\nstate_dir = "{self.base}/state"\nlog_dir = "{self.base}/log"\n'
            f'[netd]\ncni_conf_dir = "{self.conf_dir}"\ncni_bin_dirs = ["/usr/lib/cni"]\nplugin_timeout = 10.0\n')
        self.config: Config = load_config(str(self.base / "criplex.toml"), etc_file=self.base / "none",
                                          dropin_dir=self.base / "none")

    def other_bridge(self) -> str:
        """One more bridge name of this world's own (removed by the fixture too)."""
        name = "cxt" + secrets.token_hex(3)
        self.extra_bridges.append(name)
        return name

    def bridge_plugin(self, subnet: str | None = "", **extra: Any) -> dict[str, Any]:
        ipam: dict[str, Any] = {"type": "host-local", "dataDir": str(self.ipam_dir),
                                "routes": [{"dst": "0.0.0.0/0"}]}
        if subnet is not None:
            ipam["ranges"] = [[{"subnet": subnet or self.subnet}]]
        return {"type": "bridge", "bridge": extra.pop("bridge", self.bridge), "isGateway": True, "ipMasq": True,
                "hairpinMode": True, "ipam": ipam, **extra}

    def write_conflist(self, plugins: list[dict[str, Any]], version: str = "1.0.0", name: str = "cxtest",
                       file: str = "10-test.conflist") -> Path:
        path = self.conf_dir / file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins}))
        tmp.rename(path)
        return path

    def standard(self, version: str = "1.0.0") -> Path:
        return self.write_conflist([self.bridge_plugin(),
                                    {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
                                    {"type": "bandwidth", "capabilities": {"bandwidth": True}}], version)

    def request(self, ports: tuple[PortMapping, ...] = (), annotations: dict[str, str] | None = None,
                sandbox_id: str = "") -> CreateNetworkRequest:
        sandbox_id = sandbox_id or secrets.token_hex(32)
        self.sandboxes.append(sandbox_id)
        return CreateNetworkRequest(sandbox_id, "pod-" + sandbox_id[:6], "cxtest", "uid-" + sandbox_id[:8], ports,
                                    annotations or {})

    @property
    def netns_dir(self) -> Path:
        return Path(self.config.paths.run_dir) / "netns"

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir("netd")

    def leases(self) -> list[str]:
        """host-local's lease files (one per allocated address) in this world's IPAM dir."""
        return sorted(p.name for p in self.ipam_dir.rglob("*") if p.is_file() and p.name[0].isdigit())

    def host_links(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def links_on_bridge(self) -> list[str]:
        out = subprocess.run(["ip", "-o", "link", "show", "master", self.bridge], capture_output=True, text=True)
        return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]

    def nat_rules_of(self, sandbox_id: str) -> list[str]:
        out = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True).stdout
        return [line for line in out.splitlines() if sandbox_id in line]

    def drop_nat_rules_of(self, sandbox_id: str) -> None:
        """Remove the NAT rules and chains that name a sandbox (what a plugin's DEL could not)."""
        chains = set()
        for rule in self.nat_rules_of(sandbox_id):
            words = rule.split()
            if words[0] == "-A":
                if words[1].startswith("CNI-") and not words[1].startswith("CNI-HOSTPORT-"):
                    chains.add(words[1])
                subprocess.run(["sh", "-c", f"iptables -t nat -D {rule[3:]}"], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
            subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)

    async def cleanup(self) -> None:
        # DEL what a failed test left, through a netd on the same state (its cache), then the rest.
        try:
            if (self.state_dir / "networks").is_dir():
                async with running(self.config) as netd:
                    for sandbox_id in self.sandboxes:
                        with suppress(Exception):  # what can still be removed is, below
                            await netd.remove_network(RemoveNetworkRequest(sandbox_id))
        finally:
            unmount_below(self.base)
            for sandbox_id in self.sandboxes:
                self.drop_nat_rules_of(sandbox_id)
            for bridge in (self.bridge, *self.extra_bridges):
                subprocess.run(["ip", "link", "del", bridge], capture_output=True)
            shutil.rmtree(self.base, ignore_errors=True)


@asynccontextmanager
async def running(config: Config, cni: CniRunner | None = None) -> AsyncIterator[NetdService]:
    """A started netd service (records loaded, CNI dir watched), as the daemon shell runs it."""
    state_dir = config.state_dir("netd")
    state_dir.mkdir(parents=True, exist_ok=True)
    events = EventPublisher("netd", config)
    ctx = DaemonContext("netd", config, Tracing("netd", config.tracing), events, state_dir, time.time())
    service = NetdService(ctx, cni)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service._loaded.wait(), 30)
        yield service
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        events.close()


async def eventually(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def nsenter(netns: str, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", *argv], capture_output=True, text=True, timeout=timeout)
