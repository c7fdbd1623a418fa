"""Pod sandboxes: pinned IPC/UTS namespaces, /dev/shm, hostname/hosts/resolv.conf, and their removal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared import nsfs
from shared.cri import api_pb2
from shared.errors import InvalidArgument
from shared.schema.monitord import (
    ContainerRef,
    ContainerState,
    CreateSandboxRequest,
    ExecSyncRequest,
    SandboxRef,
    SandboxState,
    StartSandboxRequest,
    StopContainerRequest,
    UpdateResourcesRequest,
)
from tests.monitord.harness import container_config, in_process, new_id, pod_config, to_json


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


async def test_pod_gets_pinned_namespaces_shm_and_files_and_containers_share_them(world):
    async with in_process(world) as (service, calls):
        sandbox_id = new_id()
        config = pod_config("web")
        created = await service.create_sandbox(CreateSandboxRequest(sandbox_id, to_json(config), ""))
        assert created.state == SandboxState.CREATING
        assert nsfs.is_pinned(Path(created.ipc_path)) and nsfs.is_pinned(Path(created.uts_path))
        assert _mounted(created.shm_path)
        assert Path(created.resolv_path).read_text() == (
            "nameserver 10.0.0.10\nsearch default.svc.cluster.local\noptions ndots:5\n")
        pod = await service.start_sandbox(StartSandboxRequest(sandbox_id, "", ("10.1.2.3",)))
        assert pod.state == SandboxState.READY and pod.revision > created.revision
        assert "10.1.2.3\tweb" in Path(pod.hosts_path).read_text()

        a = await calls.run(pod, container_config("a", ["sleep", "1000"]))
        b = await calls.run(pod, container_config("b", ["sleep", "1000"]))
        assert os.readlink(f"/proc/{a.pid}/ns/ipc") == os.readlink(f"/proc/{b.pid}/ns/ipc")
        assert os.readlink(f"/proc/{a.pid}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
        out = await service.exec_sync(ExecSyncRequest(a.id, ("sh", "-c", "hostname; echo x > /dev/shm/f"), 5))
        assert out.stdout == b"web\n"
        shared = await service.exec_sync(ExecSyncRequest(b.id, ("cat", "/dev/shm/f"), 5))
        assert shared.stdout == b"x\n"

        removed = await service.remove_sandbox(SandboxRef(sandbox_id))
        assert removed.existed and set(removed.container_ids) == {a.id, b.id}
        assert not _mounted(created.shm_path) and not Path(created.ipc_path).exists()


async def test_host_ipc_and_network_pod_uses_the_host_namespaces(world):
    async with in_process(world) as (service, _calls):
        config = pod_config("hostpod", ipc=api_pb2.NODE, network=api_pb2.NODE)
        sandbox_id = new_id()
        record = await service.create_sandbox(CreateSandboxRequest(sandbox_id, to_json(config), ""))
        assert (record.ipc_path, record.uts_path, record.shm_path) == ("", "", "/dev/shm")
        await service.remove_sandbox(SandboxRef(sandbox_id))


async def test_unknown_runtime_handler_is_invalid_argument_naming_the_known_ones(world):
    async with in_process(world) as (service, _calls):
        with pytest.raises(InvalidArgument, match=r"'kata'.*runc"):
            await service.create_sandbox(CreateSandboxRequest(new_id(), to_json(pod_config()), "kata"))


async def test_failed_create_leaves_nothing_behind(world):
    async with in_process(world) as (service, _calls):
        config = pod_config("bad")
        config.linux.sysctls["kernel.no_such_thing"] = "1"
        sandbox_id = new_id()
        with pytest.raises(InvalidArgument):
            await service.create_sandbox(CreateSandboxRequest(sandbox_id, to_json(config), ""))
        assert service.records.sandbox(sandbox_id) is None
        assert not (world.run_dir / "monitord" / "sandboxes" / sandbox_id).exists()


async def test_created_container_can_be_stopped_and_removed(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.create(pod, container_config("never", ["sleep", "1000"]))
        stopped = await service.stop_container(StopContainerRequest(record.id, 10))
        assert stopped.state == ContainerState.EXITED
        assert (await service.remove_container(ContainerRef(record.id))).existed
        assert (await service.remove_container(ContainerRef(record.id))).existed is False


async def test_update_resources_changes_the_cgroup_limit(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("grow", ["sleep", "1000"], memory_limit=64 << 20))
        resources = api_pb2.LinuxContainerResources(memory_limit_in_bytes=128 << 20)
        updated = await service.update_resources(UpdateResourcesRequest(record.id, to_json(resources)))
        assert updated.resources_json
        limit = Path(f"/sys/fs/cgroup/memory{world.cgroup_parent}/criplex-{record.id}/memory.limit_in_bytes")
        assert int(limit.read_text()) == 128 << 20


async def test_reopen_log_makes_conmon_write_a_new_file(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("rot", ["sleep", "1000"], log_path="rot.log"))
        rotated = record.log_path + ".1"
        os.rename(record.log_path, rotated)
        await service.reopen_log(ContainerRef(record.id))
        assert os.path.exists(record.log_path)
