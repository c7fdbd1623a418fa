"""netd's pod networks, driven in-process: records, pins, idempotency, recovery at start, readiness."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.netd.cni import Attachment, CniRunner, LoopbackOnly
from services.netd.service import NetdService
from shared.config import Config, load_config
from shared.daemon import DaemonContext
from shared.errors import Internal, InvalidArgument
from shared.nsfs import create_pinned, is_pinned
from shared.schema.netd import (
    CreateNetworkRequest,
    ListNetworksRequest,
    PodNetwork,
    RemoveNetworkRequest,
)
from shared.state import RecordStore
from shared.tracing import Tracing
from shared.transport import EventPublisher
from tests.netd.test_nsfs import _links
from tests.support.runtime import unmount_below

SANDBOX = "a" * 64
_LOOPBACK = '{"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}'


@pytest.fixture
def config():
    base = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
    (base / "cni").mkdir()
    (base / "criplex.toml").write_text(
        f'[paths]\nrun_dir = "{base}/run"\nstate_dir = "{base}/state"\nlog_dir = "{base}/log"\n'
        f'[netd]\ncni_conf_dir = "{base}/cni"\n')
    try:
        yield load_config(str(base / "criplex.toml"), etc_file=base / "none", dropin_dir=base / "none")
    finally:
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


@asynccontextmanager
async def running(config: Config, cni: CniRunner | None = None) -> AsyncIterator[NetdService]:
    """A started netd service (records loaded, CNI dir watched), as the daemon shell runs it."""
    state_dir = config.state_dir("netd")
    state_dir.mkdir(parents=True, exist_ok=True)
    events = EventPublisher("netd", config)
    ctx = DaemonContext("netd", config, Tracing("netd", config.tracing), events, state_dir, time.time())
    service = NetdService(ctx, cni or LoopbackOnly())
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service._loaded.wait(), 5)
        yield service
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        events.close()


def _request(sandbox_id: str = SANDBOX) -> CreateNetworkRequest:
    return CreateNetworkRequest(sandbox_id, "pod", "default", "uid-1")


def _netns_dir(config: Config) -> Path:
    return Path(config.paths.run_dir) / "netns"


def _records_dir(config: Config) -> Path:
    return config.state_dir("netd") / "networks"


def _mounts_below(base: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(base + "/")]


async def _eventually(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_create_pins_a_netns_with_loopback_up_and_records_it(config):
    async def main():
        async with running(config) as netd:
            network = await netd.create_network(_request())
            assert network.netns_path == str(_netns_dir(config) / SANDBOX)
            assert network.ips == () and network.created_at > 0
            assert is_pinned(Path(network.netns_path))
            assert os.stat(network.netns_path).st_ino != os.stat("/proc/self/ns/net").st_ino
            assert _links(Path(network.netns_path)) == [("lo", True)]
            assert (_records_dir(config) / f"{SANDBOX}.json").is_file()
            assert (await netd.list_networks(ListNetworksRequest())).networks == (network,)

    asyncio.run(main())


def test_a_second_create_returns_the_existing_network(config):
    async def main():
        async with running(config) as netd:
            first, second = await asyncio.gather(netd.create_network(_request()), netd.create_network(_request()))
            assert first == second
            inode = os.stat(first.netns_path).st_ino
            assert await netd.create_network(_request()) == first
            assert os.stat(first.netns_path).st_ino == inode
            assert len((await netd.list_networks(ListNetworksRequest())).networks) == 1

    asyncio.run(main())


def test_remove_leaves_no_mount_pin_or_record_and_is_idempotent(config):
    async def main():
        async with running(config) as netd:
            network = await netd.create_network(_request())
            assert (await netd.remove_network(RemoveNetworkRequest(SANDBOX))).existed
            assert not (await netd.remove_network(RemoveNetworkRequest(SANDBOX))).existed
            assert not (await netd.remove_network(RemoveNetworkRequest("b" * 64))).existed
            assert not os.path.lexists(network.netns_path)
            assert _mounts_below(config.paths.run_dir) == []
            assert list(_records_dir(config).iterdir()) == []
            assert (await netd.list_networks(ListNetworksRequest())).networks == ()

    asyncio.run(main())


@pytest.mark.parametrize("sandbox_id", ["", "../etc", "a/b", ".hidden", "x" * 129, "a:b"])
def test_a_bad_sandbox_id_is_refused_and_makes_nothing(config, sandbox_id):
    async def main():
        async with running(config) as netd:
            with pytest.raises(InvalidArgument):
                await netd.create_network(_request(sandbox_id))
            with pytest.raises(InvalidArgument):
                await netd.remove_network(RemoveNetworkRequest(sandbox_id))
            assert list(_netns_dir(config).iterdir()) == []
            assert list(_records_dir(config).iterdir()) == []

    asyncio.run(main())


class FailingCni(LoopbackOnly):
    async def add(self, plan, sandbox_id, netns):
        raise Internal("plugin failed")


class AddressingCni(LoopbackOnly):
    async def add(self, plan, sandbox_id, netns):
        return Attachment(("10.88.0.5",), "eth0")


def test_a_failed_attachment_leaves_no_pin_and_no_record(config):
    async def main():
        async with running(config, FailingCni()) as netd:
            with pytest.raises(Internal, match="plugin failed"):
                await netd.create_network(_request())
            assert list(_netns_dir(config).iterdir()) == []
            assert list(_records_dir(config).iterdir()) == []
            assert _mounts_below(config.paths.run_dir) == []

    asyncio.run(main())


def test_what_the_attachment_reports_is_recorded(config):
    async def main():
        async with running(config, AddressingCni()) as netd:
            network = await netd.create_network(_request())
            assert (network.ips, network.interface) == (("10.88.0.5",), "eth0")
        async with running(config) as netd:
            assert (await netd.list_networks(ListNetworksRequest())).networks == (network,)
            await netd.remove_network(RemoveNetworkRequest(SANDBOX))

    asyncio.run(main())


def test_a_restart_keeps_live_networks_and_removes_unrecorded_pins(config):
    async def main():
        async with running(config) as netd:
            network = await netd.create_network(_request())
        orphan = _netns_dir(config) / ("c" * 64)
        await create_pinned({"net": orphan})  # as a crash during a removal leaves it
        (_netns_dir(config) / "empty-dir").mkdir()
        async with running(config) as netd:
            assert (await netd.list_networks(ListNetworksRequest())).networks == (network,)
            assert is_pinned(Path(network.netns_path))
            assert sorted(p.name for p in _netns_dir(config).iterdir()) == [SANDBOX]
            assert _mounts_below(config.paths.run_dir) == [network.netns_path]
            await netd.remove_network(RemoveNetworkRequest(SANDBOX))

    asyncio.run(main())


def test_a_record_whose_pin_is_gone_stays_listed_and_a_create_remakes_it(config):
    async def main():
        async with running(config) as netd:
            network = await netd.create_network(_request())
        subprocess.run(["umount", network.netns_path], check=True)  # as a reboot clears /run
        os.unlink(network.netns_path)
        async with running(config) as netd:
            assert (await netd.list_networks(ListNetworksRequest())).networks == (network,)
            assert await netd.create_network(_request()) == network
            assert is_pinned(Path(network.netns_path))
            assert (await netd.remove_network(RemoveNetworkRequest(SANDBOX))).existed
            assert not os.path.lexists(network.netns_path)

    asyncio.run(main())


def test_a_crash_between_record_and_mount_is_finished_by_the_next_create(config):
    async def main():
        # What a kill -9 after the record and the pin's file, before its mount, leaves.
        path = _netns_dir(config) / SANDBOX
        path.parent.mkdir(parents=True)
        path.touch()
        store = RecordStore(_records_dir(config), PodNetwork)
        store.load()
        await store.put(SANDBOX, PodNetwork(SANDBOX, str(path), created_at=1))
        async with running(config) as netd:
            assert [n.sandbox_id for n in (await netd.list_networks(ListNetworksRequest())).networks] == [SANDBOX]
            network = await netd.create_network(_request())
            assert network.created_at == 1
            assert is_pinned(path)
            await netd.remove_network(RemoveNetworkRequest(SANDBOX))
            assert not os.path.lexists(path)

    asyncio.run(main())


def test_readiness_follows_the_cni_conf_dir_without_listing_it_per_call(config):
    conf_dir = Path(config.netd.cni_conf_dir)

    async def main():
        async with running(config) as netd:
            assert not netd.readiness().ready
            assert netd.readiness().reason == "NetworkPluginNotReady"
            (conf_dir / "10-net.conflist").write_text(_LOOPBACK)
            await _eventually(lambda: netd.readiness().ready, "NetworkReady after a conflist appears", 1.0)
            assert netd.readiness().info == {"cni_config": "10-net.conflist", "cni_network": "lo"}
            (conf_dir / "10-net.conflist").unlink()
            await _eventually(lambda: not netd.readiness().ready, "NetworkReady false once it is gone", 1.0)
            # The directory itself replaced: seen by the periodic rescan.
            shutil.rmtree(conf_dir)
            conf_dir.mkdir()
            (conf_dir / "99-new.conf").write_text(_LOOPBACK)
            await _eventually(lambda: netd.readiness().ready, "NetworkReady in a recreated directory", 5.0)

    asyncio.run(main())
