"""The netd process over real nng: a pod network (real bridge CNI) survives a kill -9 of netd and is removed
without a trace."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.errors import Unavailable
from shared.nsfs import is_pinned
from shared.schema.common import HEALTH, HealthRequest
from shared.schema.netd import (
    CREATE_NETWORK,
    LIST_NETWORKS,
    REMOVE_NETWORK,
    ListNetworksRequest,
    PortMapping,
    RemoveNetworkRequest,
)
from shared.tracing import Tracing
from shared.transport import DaemonClient
from tests.netd.cni_support import CniWorld
from tests.netd.test_nsfs import _links
from tests.support.runtime import REPO


class Netd:
    def __init__(self, world: CniWorld) -> None:
        self.world = world
        self.base = world.base
        self.config_file = world.base / "criplex.toml"
        self.config = world.config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "services.netd", "--config", str(self.config_file)],
                                     cwd=REPO, env={**os.environ, "CRIPLEX_CONFIG": ""})

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def netd():
    world = CniWorld()
    daemon = Netd(world)
    try:
        yield daemon
    finally:
        daemon.kill()
        asyncio.run(world.cleanup())


async def _ready(client: DaemonClient) -> bool:
    return (await client.call(HEALTH, HealthRequest())).ready


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _until_serving(client: DaemonClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.call(HEALTH, HealthRequest(), timeout=1)
            return
        except Unavailable:
            assert time.monotonic() < deadline, "netd never answered health"
            await asyncio.sleep(0.05)


def test_network_survives_a_netd_kill_and_is_removed_without_a_trace(netd):
    async def main():
        client = DaemonClient("netd", netd.config, Tracing("test", netd.config.tracing))
        try:
            netd.start()
            await _until_serving(client)
            health = await client.call(HEALTH, HealthRequest())
            assert (health.ready, health.reason) == (False, "NetworkPluginNotReady")
            netd.world.standard()
            await _until(lambda: _ready(client), "NetworkReady once the conflist is written")
            request = netd.world.request(ports=(PortMapping("tcp", 80, 30000 + secrets.randbelow(20000)),))
            network = await client.call(CREATE_NETWORK, request)
            assert network.ips and network.interface == "eth0"
            assert sorted(name.split("@")[0] for name, _ in _links(Path(network.netns_path))) == ["eth0", "lo"]
            assert netd.world.nat_rules_of(request.sandbox_id) != []

            netd.kill()
            netd.start()
            await _until_serving(client)
            listed = await client.call(LIST_NETWORKS, ListNetworksRequest())
            assert listed.networks == (network,)
            assert is_pinned(Path(network.netns_path))

            assert (await client.call(REMOVE_NETWORK, RemoveNetworkRequest(request.sandbox_id))).existed
            assert (await client.call(LIST_NETWORKS, ListNetworksRequest())).networks == ()
        finally:
            client.close()
        assert not os.path.lexists(network.netns_path)
        world = netd.world
        assert world.links_on_bridge() == [] and world.leases() == []
        assert world.nat_rules_of(request.sandbox_id) == []
        assert list((world.state_dir / "cni" / "results").iterdir()) == []
        with open("/proc/self/mountinfo") as f:
            assert str(netd.base) not in f.read()

    asyncio.run(main())
