"""The netd process over real nng: a pod network survives a kill -9 of netd and is removed without a trace."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from shared.config import load_config
from shared.errors import Unavailable
from shared.nsfs import is_pinned
from shared.schema.common import HEALTH, HealthRequest
from shared.schema.netd import (
    CREATE_NETWORK,
    LIST_NETWORKS,
    REMOVE_NETWORK,
    CreateNetworkRequest,
    ListNetworksRequest,
    RemoveNetworkRequest,
)
from shared.tracing import Tracing
from shared.transport import DaemonClient
from tests.netd.test_nsfs import _links
from tests.support.runtime import REPO, unmount_below

SANDBOX = "f" * 64


class Netd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.config_file = base / "criplex.toml"
        self.config_file.write_text(
            f'[paths]\nrun_dir = "{base}/run"\nstate_dir = "{base}/state"\nlog_dir = "{base}/log"\n'
            f'[netd]\ncni_conf_dir = "{base}/cni"\n')
        self.config = load_config(str(self.config_file), etc_file=base / "none", dropin_dir=base / "none")
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
    base = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
    daemon = Netd(base)
    try:
        yield daemon
    finally:
        daemon.kill()
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


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
            network = await client.call(CREATE_NETWORK, CreateNetworkRequest(SANDBOX, "p", "ns", "uid"))
            assert _links(Path(network.netns_path)) == [("lo", True)]

            netd.kill()
            netd.start()
            await _until_serving(client)
            listed = await client.call(LIST_NETWORKS, ListNetworksRequest())
            assert listed.networks == (network,)
            assert is_pinned(Path(network.netns_path))

            assert (await client.call(REMOVE_NETWORK, RemoveNetworkRequest(SANDBOX))).existed
            assert (await client.call(LIST_NETWORKS, ListNetworksRequest())).networks == ()
        finally:
            client.close()
        assert not os.path.lexists(network.netns_path)
        with open("/proc/self/mountinfo") as f:
            assert str(netd.base) not in f.read()

    asyncio.run(main())
