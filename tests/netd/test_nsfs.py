"""Pinned namespaces: made by a throw-away thread, visible to everyone, removed without a trace."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from shared.errors import InvalidArgument
from shared.nsfs import create_pinned, is_pinned, remove_pinned
from tests.support.runtime import unmount_below


@pytest.fixture
def pins():
    base = Path(tempfile.mkdtemp(prefix="cxn-", dir="/tmp"))
    try:
        yield base
    finally:
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


def _mounts_below(base: Path) -> list[str]:
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _nsenter(option: str, *argv: str) -> str:
    return subprocess.run(["nsenter", option, *argv], check=True, capture_output=True, text=True).stdout


def _links(netns: Path) -> list[tuple[str, bool]]:
    links = []
    for line in _nsenter(f"--net={netns}", "ip", "-o", "link").splitlines():
        name = line.split(":")[1].strip()
        flags = line.split("<", 1)[1].split(">", 1)[0].split(",")
        links.append((name, "UP" in flags))
    return links


def test_net_pin_holds_a_new_namespace_with_only_loopback_up(pins):
    asyncio.run(create_pinned({"net": pins / "net"}))
    assert is_pinned(pins / "net")
    assert os.stat(pins / "net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert _links(pins / "net") == [("lo", True)]
    assert _mounts_below(pins) == [str(pins / "net")]


def test_uts_pin_carries_the_hostname_and_host_keeps_its_own(pins):
    host = os.uname().nodename
    asyncio.run(create_pinned({"uts": pins / "uts", "ipc": pins / "ipc"}, hostname="pod-host-1"))
    assert _nsenter(f"--uts={pins / 'uts'}", "hostname").strip() == "pod-host-1"
    assert os.uname().nodename == host
    assert is_pinned(pins / "ipc")
    assert os.stat(pins / "ipc").st_ino != os.stat("/proc/self/ns/ipc").st_ino


def test_sysctls_are_written_inside_the_new_namespaces_only(pins):
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    host_shmmni = Path("/proc/sys/kernel/shmmni").read_text()
    wanted_forward = "0" if host_forward.strip() == "1" else "1"
    asyncio.run(create_pinned({"net": pins / "net", "ipc": pins / "ipc"},
                              sysctls={"net.ipv4.ip_forward": wanted_forward, "kernel/shmmni": "1234"}))
    assert _nsenter(f"--net={pins / 'net'}", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == wanted_forward
    assert _nsenter(f"--ipc={pins / 'ipc'}", "cat", "/proc/sys/kernel/shmmni").strip() == "1234"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward
    assert Path("/proc/sys/kernel/shmmni").read_text() == host_shmmni


@pytest.mark.parametrize("sysctls", [
    {"vm.swappiness": "1"},  # not namespaced: would change the host
    {"kernel.shmmax": "1"},  # ipc, but no ipc namespace is being made
    {"net/../vm/swappiness": "1"},
    {"net.ipv4.no_such_sysctl": "1"},
])
def test_refused_sysctls_leave_nothing(pins, sysctls):
    with pytest.raises(InvalidArgument):
        asyncio.run(create_pinned({"net": pins / "net"}, sysctls=sysctls))
    assert list(pins.iterdir()) == []


def test_removal_leaves_no_mount_and_no_file_and_is_idempotent(pins):
    async def main():
        await create_pinned({"net": pins / "net", "uts": pins / "uts"})
        for kind in ("net", "uts"):
            await remove_pinned(pins / kind)
            await remove_pinned(pins / kind)

    asyncio.run(main())
    assert _mounts_below(pins) == []
    assert list(pins.iterdir()) == []
    assert not is_pinned(pins / "net")


def test_failure_on_a_later_pin_removes_the_earlier_ones(pins):
    with pytest.raises(InvalidArgument, match="does not exist"):
        asyncio.run(create_pinned({"net": pins / "net", "ipc": pins / "missing" / "ipc"}))
    assert _mounts_below(pins) == []
    assert list(pins.iterdir()) == []


def test_an_existing_path_is_refused_and_kept(pins):
    (pins / "net").write_text("mine")
    with pytest.raises(InvalidArgument, match="exists"):
        asyncio.run(create_pinned({"net": pins / "net"}))
    assert (pins / "net").read_text() == "mine"


def test_many_cycles_leave_no_mounts_and_never_move_the_calling_thread(pins):
    own = {kind: os.readlink(f"/proc/thread-self/ns/{kind}") for kind in ("net", "ipc", "uts")}

    async def main():
        for _ in range(50):
            paths = {kind: pins / kind for kind in ("net", "ipc", "uts")}
            await create_pinned(paths, hostname="cycle")
            assert all(is_pinned(p) for p in paths.values())
            for path in paths.values():
                await remove_pinned(path)
            # The loop thread and the pool threads that ran removals are never moved.
            assert await asyncio.to_thread(os.readlink, "/proc/thread-self/ns/net") == own["net"]

    asyncio.run(main())
    assert {kind: os.readlink(f"/proc/thread-self/ns/{kind}") for kind in own} == own
    assert _mounts_below(pins) == []
    assert list(pins.iterdir()) == []


def test_a_cancelled_caller_leaves_nothing(pins):
    async def main():
        task = asyncio.create_task(create_pinned({"net": pins / "net"}))
        await asyncio.sleep(0)  # the thread has started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _mounts_below(pins) == []
    assert list(pins.iterdir()) == []
