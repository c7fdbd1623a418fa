"""Containers on real runc + conmon: exits, reasons, logs, stop escalation, OOM, exec."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from pathlib import Path

import pytest

from shared.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, NotFound
from shared.schema.monitord import (
    STATE_TOPIC,
    ContainerRef,
    ContainerState,
    CreateSandboxRequest,
    ExecSyncRequest,
    ListStateRequest,
    SandboxRef,
    StatsRequest,
    StopContainerRequest,
)
from shared.transport import EventSubscriber
from tests.monitord.harness import container_config, eventually, in_process, new_id, pid_alive

CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) (.*)$")


async def test_container_that_exits_zero_is_completed_and_three_is_error(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        ok = await calls.run(pod, container_config("ok", ["sh", "-c", "exit 0"]))
        bad = await calls.run(pod, container_config("bad", ["sh", "-c", "exit 3"]))
        assert ok.state == ContainerState.RUNNING and ok.started_at > 0
        await eventually(lambda: service.records.container(ok.id).state == ContainerState.EXITED, 10, "ok to exit")
        await eventually(lambda: service.records.container(bad.id).state == ContainerState.EXITED, 10, "bad to exit")
        done, failed = service.records.container(ok.id), service.records.container(bad.id)
        assert (done.exit_code, done.reason) == (0, "Completed")
        assert (failed.exit_code, failed.reason) == (3, "Error")
        assert done.finished_at >= done.created_at
        assert not world.run_dir.joinpath("monitord/exits", ok.id).exists()


async def test_output_lands_in_the_log_in_cri_format(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("talk", ["sh", "-c", "echo out; echo err >&2"],
                                                       log_path="talk/0.log"))
        assert record.log_path == str(world.logs / "pod" / "talk" / "0.log")
        await eventually(lambda: service.records.container(record.id).state == ContainerState.EXITED, 10, "exit")
        lines = Path(record.log_path).read_text().splitlines()
        parsed = [CRI_LOG_LINE.match(line).groups()[1:] for line in lines]
        assert ("stdout", "F", "out") in parsed and ("stderr", "F", "err") in parsed


async def test_stop_escalates_to_sigkill_after_timeout(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config(
            "stubborn", ["sh", "-c", 'trap "" TERM; echo armed; while true; do sleep 0.1; done'], log_path="s.log"))
        await eventually(lambda: "armed" in Path(record.log_path).read_text(), 10, "the trap to be set")
        started = time.monotonic()
        stopped = await service.stop_container(StopContainerRequest(record.id, 2))
        elapsed = time.monotonic() - started
        assert elapsed >= 2
        assert stopped.state == ContainerState.EXITED
        assert stopped.exit_code == 137 and stopped.reason == "Error"
        again = await service.stop_container(StopContainerRequest(record.id, 2))
        assert again.state == ContainerState.EXITED  # idempotent


async def test_stop_signal_ends_a_cooperative_container_before_the_timeout(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config(
            "polite", ["sh", "-c", 'trap "exit 0" TERM; echo armed; while true; do sleep 0.1; done'], log_path="p.log"))
        await eventually(lambda: "armed" in Path(record.log_path).read_text(), 10, "the trap to be set")
        started = time.monotonic()
        stopped = await service.stop_container(StopContainerRequest(record.id, 30))
        assert time.monotonic() - started < 10
        assert (stopped.exit_code, stopped.reason) == (0, "Completed")


async def test_memory_limit_exceeded_is_oomkilled(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config(
            "hog", ["sh", "-c", 'x=$(head -c 64000000 /dev/zero | tr "\\0" a); echo survived'],
            memory_limit=16 * 1024 * 1024))
        await eventually(lambda: service.records.container(record.id).state == ContainerState.EXITED, 30, "the OOM")
        ended = service.records.container(record.id)
        assert ended.reason == "OOMKilled", ended
        assert ended.exit_code != 0


async def test_exec_sync_returns_output_and_exit_code(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("box", ["sleep", "1000"]))
        result = await service.exec_sync(ExecSyncRequest(record.id, ("sh", "-c", "echo hi; echo oops >&2; exit 7"), 0))
        assert (result.stdout, result.stderr, result.exit_code) == (b"hi\n", b"oops\n", 7)
        hostname = await service.exec_sync(ExecSyncRequest(record.id, ("cat", "/etc/hostname"), 5))
        assert hostname.stdout == b"pod\n"


async def test_exec_sync_timeout_is_deadline_exceeded_and_kills_the_command(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("box", ["sleep", "1000"]))
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="timed out after 1 s"):
            await service.exec_sync(ExecSyncRequest(record.id, ("sleep", "77"), 1))
        assert time.monotonic() - started < 10
        listing = await service.exec_sync(ExecSyncRequest(
            record.id, ("sh", "-c", 'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < $f; echo; done'), 5))
        assert b"sleep 1000" in listing.stdout
        assert b"sleep 77" not in listing.stdout


async def test_duplicate_names_are_already_exists_naming_the_holder(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        first = await calls.create(pod, container_config("twin", ["sleep", "1000"]))
        with pytest.raises(AlreadyExists, match=first.id):
            await calls.create(pod, container_config("twin", ["sleep", "1000"]))
        with pytest.raises(AlreadyExists, match=pod.id):
            await service.create_sandbox(CreateSandboxRequest(new_id(), pod.config_json, ""))


async def test_unknown_ids_are_not_found_and_removal_is_idempotent(world):
    async with in_process(world) as (service, _calls):
        with pytest.raises(NotFound):
            await service.start_container(ContainerRef("nope"))
        with pytest.raises(NotFound):
            await service.stop_container(StopContainerRequest("nope", 0))
        with pytest.raises(NotFound):
            await service.stop_sandbox(SandboxRef("nope"))
        assert (await service.remove_container(ContainerRef("nope"))).existed is False
        assert (await service.remove_sandbox(SandboxRef("nope"))).existed is False


async def test_start_twice_is_failed_precondition(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.run(pod, container_config("once", ["sleep", "1000"]))
        with pytest.raises(FailedPrecondition, match="running"):
            await service.start_container(ContainerRef(record.id))


async def test_remove_sandbox_kills_and_removes_its_containers_and_parts(world):
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        running = await calls.run(pod, container_config("a", ["sleep", "1000"]))
        created = await calls.create(pod, container_config("b", ["sleep", "1000"]))
        stats = await service.container_stats(StatsRequest((running.id,)))
        assert stats.stats and stats.stats[0].memory_usage_bytes > 0
        stopped = await service.stop_sandbox(SandboxRef(pod.id))
        assert set(stopped.container_ids) == {running.id, created.id}
        assert not pid_alive(running.pid)
        removed = await service.remove_sandbox(SandboxRef(pod.id))
        assert removed.existed and set(removed.container_ids) == {running.id, created.id}
        state = await service.list_state(ListStateRequest())
        assert state.sandboxes == () and state.containers == ()
        assert not world.run_dir.joinpath("monitord/sandboxes", pod.id).exists()
        assert not world.run_dir.joinpath("monitord/bundles", running.id).exists()


async def test_every_change_is_published_with_a_growing_revision(world):
    async with in_process(world) as (service, calls):
        subscriber = EventSubscriber("monitord", world.config, (STATE_TOPIC,))
        connected = asyncio.Event()
        subscriber.on_connect(connected.set)
        try:
            await asyncio.wait_for(connected.wait(), 10)
            pod = await calls.ready_pod()
            record = await calls.run(pod, container_config("ev", ["sh", "-c", "exit 0"]))
            await eventually(lambda: service.records.container(record.id).state == ContainerState.EXITED, 10, "exit")
            await service.remove_container(ContainerRef(record.id))
            seen = []
            async with asyncio.timeout(10):
                async for topic, change in subscriber.events():
                    if topic == STATE_TOPIC and change["id"] == record.id:
                        seen.append(change)
                        if change["container"] is None:
                            break
            states = [c["container"]["state"] if c["container"] else None for c in seen]
            assert states == ["creating", "created", "running", "exited", None]
            revisions = [c["revision"] for c in seen]
            assert revisions == sorted(set(revisions))
            state = await service.list_state(ListStateRequest())
            assert state.revision >= revisions[-1]
        finally:
            subscriber.close()


async def test_remove_cleans_up_a_create_interrupted_by_a_crash(world):
    """A CREATING record with conmon and a created runc container behind it, as a kill -9 leaves."""
    async with in_process(world) as (service, calls):
        pod = await calls.ready_pod()
        record = await calls.create(pod, container_config("half", ["sleep", "1000"]))
        await service.records.put_container(dataclasses.replace(record, state=ContainerState.CREATING))
        assert (await service.remove_container(ContainerRef(record.id))).existed
        assert not world.run_dir.joinpath("monitord/bundles", record.id).exists()
        await eventually(lambda: not pid_alive(record.pid), 10, "the half-made container to die")
