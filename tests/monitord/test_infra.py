"""The infra container of a pod that shares one PID namespace: started with the pod, PID 1 of
its containers, killed and removed with it, and the pod's readiness when it dies."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import pytest

from services.monitord import spec
from services.monitord.infra import infra_spec_inputs
from services.monitord.spec.inputs import HostFacts
from shared.cri import api_pb2
from shared.errors import FailedPrecondition
from shared.schema.imaged import ImageRecord
from shared.schema.monitord import (
    CREATE_SANDBOX,
    LIST_STATE,
    REMOVE_SANDBOX,
    START_SANDBOX,
    ContainerState,
    CreateSandboxRequest,
    ExecSyncRequest,
    ListStateRequest,
    SandboxRecord,
    SandboxRef,
    SandboxState,
    StartSandboxRequest,
)
from tests.monitord.harness import (
    CGROUP_CONTROLLERS,
    Calls,
    MonitordWorld,
    as_daemon,
    container_config,
    eventually,
    image_record,
    in_process,
    make_rootfs,
    new_id,
    pid_alive,
    pod_config,
    to_json,
)

PAUSE_CMD = ("sleep", "2147483647")


def pause_image() -> ImageRecord:
    """The busybox stand-in for registry.k8s.io/pause: a process that only waits."""
    return dataclasses.replace(image_record(), id="sha256:" + "cd" * 32, repo_tags=("test/pause:3.9",),
                               cmd=PAUSE_CMD, user="65534:65534")


def shared_pid_pod(name: str = "shared") -> api_pb2.PodSandboxConfig:
    return pod_config(name, pid=api_pb2.POD)


async def start_infra_pod(world: MonitordWorld, calls: Calls, image: ImageRecord | None = None) -> SandboxRecord:
    sandbox_id = new_id()
    await calls.call(CREATE_SANDBOX, CreateSandboxRequest(sandbox_id, to_json(shared_pid_pod()), ""))
    record = await calls.call(START_SANDBOX, StartSandboxRequest(
        sandbox_id, "", infra_rootfs=str(world.rootfs()), infra_image=image or pause_image()))
    assert isinstance(record, SandboxRecord)
    return record


async def sandbox_state(calls: Calls, sandbox_id: str) -> SandboxRecord | None:
    state = await calls.call(LIST_STATE, ListStateRequest())
    return next((s for s in state.sandboxes if s.id == sandbox_id), None)


def runc_knows(world: MonitordWorld, container_id: str) -> bool:
    result = subprocess.run(["runc", f"--root={world.runc_root}", "state", container_id], capture_output=True,
                            check=False, timeout=30)
    return result.returncode == 0


def cgroups_of(world: MonitordWorld, container_id: str) -> list[Path]:
    name = world.cgroup_parent.strip("/") + f"/criplex-{container_id}"
    return [c / name for c in CGROUP_CONTROLLERS.iterdir() if (c / name).is_dir()]


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def test_shared_pid_pod_runs_an_infra_container_that_is_pid_1_of_its_containers(world):
    async with in_process(world) as (service, calls):
        pod = await start_infra_pod(world, calls)
        assert pod.state == SandboxState.READY
        assert pod.infra_container_id == pod.id and pid_alive(pod.infra_pid)
        assert cmdline(pod.infra_pid) == list(PAUSE_CMD)
        assert os.readlink(f"/proc/{pod.infra_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert cgroups_of(world, pod.id)

        a = await calls.run(pod, container_config("a", ["sleep", "1001"]))
        b = await calls.run(pod, container_config("b", ["sleep", "1002"]))
        infra_ns = os.readlink(f"/proc/{pod.infra_pid}/ns/pid")
        assert os.readlink(f"/proc/{a.pid}/ns/pid") == os.readlink(f"/proc/{b.pid}/ns/pid") == infra_ns

        seen_from_a = await service.exec_sync(ExecSyncRequest(a.id, ("ps",), 5))
        assert b"sleep 1002" in seen_from_a.stdout and b"sleep 2147483647" in seen_from_a.stdout
        first = await service.exec_sync(ExecSyncRequest(b.id, ("cat", "/proc/1/cmdline"), 5))
        assert first.stdout.split(b"\0")[:-1] == [arg.encode() for arg in PAUSE_CMD]

        # The infra container is the pod's, never one of the kubelet's containers.
        state = await service.list_state(ListStateRequest())
        assert {c.id for c in state.containers} == {a.id, b.id}

        stopped = await service.stop_sandbox(SandboxRef(pod.id))
        assert set(stopped.container_ids) == {a.id, b.id}
        assert not pid_alive(pod.infra_pid)
        assert service.records.sandbox(pod.id).state == SandboxState.NOTREADY

        await service.remove_sandbox(SandboxRef(pod.id))
        monitord_run = world.run_dir / "monitord"
        assert not (monitord_run / "bundles" / pod.id).exists()
        assert not (monitord_run / "exits" / pod.id).exists()
        assert not (world.state_dir / "monitord" / "persist" / pod.id).exists()
        assert not runc_knows(world, pod.id)
        assert cgroups_of(world, pod.id) == []


async def test_shared_pid_pod_without_a_pause_rootfs_is_failed_precondition(world):
    async with in_process(world) as (service, _calls):
        sandbox_id = new_id()
        await service.create_sandbox(CreateSandboxRequest(sandbox_id, to_json(shared_pid_pod()), ""))
        with pytest.raises(FailedPrecondition, match="pause image rootfs"):
            await service.start_sandbox(StartSandboxRequest(sandbox_id, ""))
        assert service.records.sandbox(sandbox_id).state == SandboxState.CREATING
        await service.remove_sandbox(SandboxRef(sandbox_id))


async def test_infra_container_that_cannot_start_leaves_nothing_behind(world):
    async with in_process(world) as (service, calls):
        broken = dataclasses.replace(pause_image(), cmd=("/pause",))  # not in the busybox rootfs
        with pytest.raises(FailedPrecondition, match="pause"):
            await start_infra_pod(world, calls, broken)
        sandbox = next(iter(service.records.sandboxes.values()))
        assert (sandbox.state, sandbox.infra_container_id, sandbox.infra_pid) == (SandboxState.CREATING, "", 0)
        assert not (world.run_dir / "monitord" / "bundles" / sandbox.id).exists()
        assert not runc_knows(world, sandbox.id)
        await service.remove_sandbox(SandboxRef(sandbox.id))


async def test_infra_process_killed_makes_the_pod_not_ready(world):
    async with in_process(world) as (service, calls):
        pod = await start_infra_pod(world, calls)
        container = await calls.run(pod, container_config("c", ["sleep", "1000"]))
        os.kill(pod.infra_pid, signal.SIGKILL)
        await eventually(lambda: service.records.sandbox(pod.id).state == SandboxState.NOTREADY, 10,
                         "the pod to turn not ready")
        # The PID namespace died with its init, and every process in it.
        await eventually(lambda: service.records.container(container.id).state == ContainerState.EXITED, 10,
                         "the pod's container to be recorded exited")
        await eventually(lambda: not (world.run_dir / "monitord" / "exits" / pod.id).exists(), 10,
                         "the infra container's exit file to be consumed")
        assert pod.id not in service.records.containers

        await service.stop_sandbox(SandboxRef(pod.id))
        assert (await service.remove_sandbox(SandboxRef(pod.id))).existed
        assert not runc_knows(world, pod.id) and cgroups_of(world, pod.id) == []


async def test_infra_pod_stays_ready_across_a_monitord_kill_and_restart(world):
    async with as_daemon(world) as calls:
        pod = await start_infra_pod(world, calls)
        world.kill_daemon()
        await world.restart_daemon(calls)
        after = await sandbox_state(calls, pod.id)
        assert (after.state, after.infra_pid) == (SandboxState.READY, pod.infra_pid)
        assert pid_alive(pod.infra_pid)

        # Containers created after the restart still join the infra container's PID namespace.
        container = await calls.run(after, container_config("late", ["sleep", "1000"]))
        assert os.readlink(f"/proc/{container.pid}/ns/pid") == os.readlink(f"/proc/{pod.infra_pid}/ns/pid")

        await calls.call(REMOVE_SANDBOX, SandboxRef(pod.id))
        assert not pid_alive(pod.infra_pid) and not runc_knows(world, pod.id)


async def test_infra_exit_while_monitord_is_down_makes_the_pod_not_ready_after_restart(world):
    async with as_daemon(world) as calls:
        pod = await start_infra_pod(world, calls)
        world.kill_daemon()
        os.kill(pod.infra_pid, signal.SIGKILL)
        exit_file = world.run_dir / "monitord" / "exits" / pod.id
        await eventually(exit_file.exists, 10, "conmon to write the infra container's exit file")
        await world.restart_daemon(calls)
        assert (await sandbox_state(calls, pod.id)).state == SandboxState.NOTREADY
        assert not exit_file.exists()
        await calls.call(REMOVE_SANDBOX, SandboxRef(pod.id))


def test_infra_spec_has_its_own_pid_namespace_no_capabilities_and_the_pods_user(tmp_path):
    config = shared_pid_pod("p")
    config.linux.security_context.run_as_user.value = 1000
    sandbox = SandboxRecord(id="s" * 64, name="k8s_POD_p", config_json=to_json(config), runtime_handler="runc",
                            state=SandboxState.CREATING, created_at=0, revision=0, netns_path="/pins/net",
                            ipc_path="/pins/ipc", uts_path="/pins/uts", cgroup_parent="/kubepods/pod1")
    inputs = infra_spec_inputs(sandbox, config, str(make_rootfs(tmp_path / "rootfs")), pause_image(),
                               HostFacts(frozenset({"CAP_CHOWN", "CAP_KILL"})))
    generated = spec.generate(inputs).spec
    assert generated["process"]["args"] == list(PAUSE_CMD)
    assert generated["process"]["user"]["uid"] == 1000  # the pod's run_as_user over the image's 65534
    assert generated["process"]["capabilities"]["bounding"] == []
    assert generated["process"]["noNewPrivileges"] and generated["root"]["readonly"]
    assert {"type": "pid"} in generated["linux"]["namespaces"]
    assert {"type": "network", "path": "/pins/net"} in generated["linux"]["namespaces"]
    assert generated["linux"]["cgroupsPath"] == f"/kubepods/pod1/criplex-{sandbox.id}"
    assert generated["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
