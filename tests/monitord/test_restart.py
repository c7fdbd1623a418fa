"""monitord killed with SIGKILL: containers live on, and exits while it was down are recorded after."""

from __future__ import annotations

import os
import signal

from shared.schema.monitord import (
    LIST_STATE,
    STOP_CONTAINER,
    ContainerRecord,
    ContainerState,
    ListStateRequest,
    StopContainerRequest,
)
from tests.monitord.harness import Calls, as_daemon, container_config, eventually, pid_alive


async def _state(calls: Calls, container_id: str) -> ContainerRecord:
    state = await calls.call(LIST_STATE, ListStateRequest())
    return next(c for c in state.containers if c.id == container_id)


async def test_container_outlives_a_killed_monitord_and_its_exit_is_recorded_after_restart(world):
    async with as_daemon(world) as calls:
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config(
            "survivor", ["sh", "-c", 'trap "exit 5" USR1; while true; do sleep 0.1; done']))
        world.kill_daemon()
        assert pid_alive(record.pid)

        await world.restart_daemon(calls)
        assert (await _state(calls, record.id)).state == ContainerState.RUNNING
        assert pid_alive(record.pid)

        # Exit while monitord is down: the exit file waits for it.
        world.kill_daemon()
        os.kill(record.pid, signal.SIGUSR1)
        exit_file = world.run_dir / "monitord" / "exits" / record.id
        await eventually(exit_file.exists, 10, "conmon to write the exit file")
        await world.restart_daemon(calls)
        ended = await _state(calls, record.id)
        assert (ended.state, ended.exit_code, ended.reason) == (ContainerState.EXITED, 5, "Error")
        assert not exit_file.exists()


async def test_exit_after_restart_is_seen_by_the_new_watcher(world):
    async with as_daemon(world) as calls:
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("sleeper", ["sh", "-c", "sleep 1000"]))
        world.kill_daemon()
        await world.restart_daemon(calls)
        stopped = await calls.call(STOP_CONTAINER, StopContainerRequest(record.id, 0))
        assert (stopped.state, stopped.exit_code) == (ContainerState.EXITED, 137)


async def test_lost_runtime_state_marks_the_container_exited(world):
    """After a reboot /run is empty: runc knows nothing, conmon is gone."""
    async with as_daemon(world) as calls:
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("ghost", ["sleep", "1000"]))
        world.kill_daemon()
        bundle = world.run_dir / "monitord" / "bundles" / record.id
        conmon_pid = int((bundle / "conmon-pidfile").read_text())
        os.kill(conmon_pid, signal.SIGKILL)
        os.kill(record.pid, signal.SIGKILL)
        await eventually(lambda: not pid_alive(record.pid), 10, "the container to die")
        import subprocess

        subprocess.run(["runc", f"--root={world.runc_root}", "delete", "--force", record.id], check=True)
        await world.restart_daemon(calls)
        lost = await _state(calls, record.id)
        assert (lost.state, lost.exit_code, lost.reason) == (ContainerState.EXITED, 255, "Error")
        assert "lost" in lost.message
