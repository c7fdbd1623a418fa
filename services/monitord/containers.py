"""Container lifecycle: create under conmon, start, exits, stop, remove, exec, resources, logs, stats.

Every transition of one container happens under that container's lock, the exit watcher's
included, so a container that exits the instant it is started is recorded RUNNING and then
EXITED, never the other way round. Waiting (for an exit after a signal) happens outside the
lock: the watcher must be able to take it to record the exit that ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from services.monitord import spec
from services.monitord.cgroup_stats import read_stats
from services.monitord.conmon import ConmonLaunch, create_under_conmon
from services.monitord.cri_config import container_name, container_tty, parse_config
from services.monitord.exec_sync import exec_sync
from services.monitord.layout import Layout
from services.monitord.log_reopen import reopen_log
from services.monitord.oci_runtime import OciRuntime, RuntimeHandlers
from services.monitord.process_signal import ProcessHandle, signal_number
from services.monitord.records import StateRecords
from services.monitord.spec.inputs import HostFacts, SpecInputs
from shared.cgroup_hierarchy import Hierarchy
from shared.config import MonitordConfig
from shared.cri import api_pb2
from shared.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from shared.locks import KeyedLock
from shared.schema.monitord import (
    ContainerRecord,
    ContainerState,
    ContainerStats,
    CreateContainerRequest,
    ExecSyncRequest,
    ExecSyncResponse,
    SandboxState,
    StatsRequest,
    StatsResponse,
    UpdateResourcesRequest,
)
from shared.state import write_atomic

log = logging.getLogger(__name__)

LIVE = (ContainerState.CREATED, ContainerState.RUNNING)
# After SIGKILL the exit file normally follows within milliseconds; past this, conmon is
# presumed dead and the exit is recorded without it.
_KILL_WAIT = 10.0
_UNKNOWN_EXIT = 255


class Containers:
    def __init__(self, records: StateRecords, layout: Layout, config: MonitordConfig, runtimes: RuntimeHandlers,
                 host: HostFacts) -> None:
        self._records = records
        self._layout = layout
        self._config = config
        self._runtimes = runtimes
        self._host = host
        self._locks: KeyedLock[str] = KeyedLock()
        self._names = asyncio.Lock()
        self._exited: dict[str, asyncio.Event] = {}
        self._cgroups: dict[str, str] = {}
        self._hierarchy = Hierarchy.detect()
        self.oom_kills: dict[str, int] = {}  # by container name, since monitord started (for /metrics)

    def _get(self, container_id: str) -> ContainerRecord:
        record = self._records.container(container_id)
        if record is None:
            raise NotFound(f"container {container_id} not found")
        return record

    # -- create / start ---------------------------------------------------------------------

    async def create(self, req: CreateContainerRequest) -> ContainerRecord:
        sandbox = self._records.sandbox(req.sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {req.sandbox_id} not found")
        if sandbox.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {req.sandbox_id} is {sandbox.state.value}, not ready")
        config = parse_config(req.config_json, api_pb2.ContainerConfig, "config_json")
        sandbox_config = parse_config(sandbox.config_json, api_pb2.PodSandboxConfig, "the pod's config")
        name = container_name(config, sandbox_config)
        runtime = self._runtimes.get(sandbox.runtime_handler)
        async with self._names:
            for other in self._records.containers.values():
                if other.name == name:
                    raise AlreadyExists(f"container name {name} is reserved for container {other.id}")
            if req.id in self._records.containers:
                raise AlreadyExists(f"container {req.id} already exists")
            await self._locks.acquire(req.id)
            try:
                record = await self._records.put_container(ContainerRecord(
                    id=req.id, sandbox_id=sandbox.id, name=name, config_json=req.config_json,
                    image_id=req.image.id, image_ref=req.image_ref, state=ContainerState.CREATING,
                    created_at=time.time_ns(), revision=0, rootfs=req.rootfs,
                    bundle=str(self._layout.bundle(req.id)), runtime_handler=runtime.handler,
                ))
            except BaseException:
                self._locks.release(req.id)
                raise
        try:
            log_path = ""
            if sandbox_config.log_directory and config.log_path:
                log_path = os.path.join(sandbox_config.log_directory, config.log_path)
            inputs = SpecInputs(req.id, sandbox, sandbox_config, config, req.image, req.rootfs, self._host)
            try:
                generated = await asyncio.to_thread(spec.generate, inputs)
                await asyncio.to_thread(self._write_bundle, req.id, generated.spec, log_path)
                pid = await create_under_conmon(self._config.conmon, runtime, ConmonLaunch(
                    container_id=req.id, name=name, bundle=self._layout.bundle(req.id),
                    persist_dir=self._layout.persist(req.id), exit_dir=self._layout.exits,
                    socket_dir=self._layout.sockets,
                    log_path=log_path or str(self._layout.bundle(req.id) / "ctr.log"),
                    tty=config.tty, stdin=config.stdin, stdin_once=config.stdin_once,
                    log_size_max=self._config.log_size_max,
                    systemd_cgroup=self._config.cgroup_manager == "systemd",
                ), self._config.create_timeout)
            except BaseException:
                await asyncio.shield(self._discard(record))
                raise
            return await self._records.put_container(dataclasses.replace(
                record, state=ContainerState.CREATED, pid=pid, log_path=log_path, user=generated.user,
                stop_signal=generated.stop_signal,
            ))
        finally:
            self._locks.release(req.id)

    def _write_bundle(self, container_id: str, oci_spec: dict[str, object], log_path: str) -> None:
        bundle = self._layout.bundle(container_id)
        bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._layout.persist(container_id).mkdir(mode=0o700, parents=True, exist_ok=True)
        if log_path:
            Path(log_path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(bundle / "config.json", json.dumps(oci_spec, indent=1).encode())

    async def _discard(self, record: ContainerRecord) -> None:
        """Undo a create that failed half-way: whatever of the container exists, and its record."""
        runtime = self._runtimes.find(record.runtime_handler)
        if runtime is not None:
            try:
                # It never started, so --force only has to kill a process parked on runc's exec fifo.
                await runtime.delete(record.id, force=True)
            except Internal as exc:
                log.warning("discarding %s: %s", record.id, exc.message)
        await asyncio.to_thread(self._remove_files, record.id)
        await self._records.delete_container(record.id)

    def _remove_files(self, container_id: str) -> None:
        shutil.rmtree(self._layout.bundle(container_id), ignore_errors=True)
        shutil.rmtree(self._layout.persist(container_id), ignore_errors=True)
        self._layout.exit_file(container_id).unlink(missing_ok=True)
        self._cgroups.pop(container_id, None)

    async def start(self, container_id: str) -> ContainerRecord:
        async with self._locks.hold(container_id):
            record = self._get(container_id)
            if record.state != ContainerState.CREATED:
                raise FailedPrecondition(f"container {container_id} is {record.state.value}, not created")
            await self._runtime_of(record).start(container_id)
            return await self._records.put_container(dataclasses.replace(
                record, state=ContainerState.RUNNING, started_at=time.time_ns()))

    def _runtime_of(self, record: ContainerRecord) -> OciRuntime:
        runtime = self._runtimes.find(record.runtime_handler)
        if runtime is None:
            raise FailedPrecondition(f"container {record.id}'s runtime handler {record.runtime_handler!r} is no "
                                     "longer configured")
        return runtime

    # -- exits ------------------------------------------------------------------------------

    async def apply_exit(self, container_id: str) -> None:
        """conmon wrote `<exits>/<id>`: record how the container ended, then drop the file."""
        exit_file = self._layout.exit_file(container_id)
        async with self._locks.hold(container_id):
            record = self._records.container(container_id)
            if record is not None and record.state == ContainerState.CREATING:
                return  # a create in flight (or crashed); its own cleanup owns the file
            if record is not None and record.state in LIVE:
                try:
                    text = await asyncio.to_thread(exit_file.read_text)
                    finished = exit_file.stat().st_mtime_ns
                except FileNotFoundError:
                    return
                if not text.strip():
                    return  # written but not closed yet: the close-write event follows
                await self._record_exit(record, int(text.strip()), finished)
            await asyncio.to_thread(exit_file.unlink, True)

    async def _record_exit(self, record: ContainerRecord, code: int, finished_ns: int, reason: str = "",
                           message: str = "") -> None:
        if not reason:
            oom = await asyncio.to_thread(self._oom_killed, record.id)
            reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
            if oom:
                self.oom_kills[record.name] = self.oom_kills.get(record.name, 0) + 1
        await self._records.put_container(dataclasses.replace(
            record, state=ContainerState.EXITED, exit_code=code, finished_at=finished_ns, reason=reason,
            message=message, paused=False))
        event = self._exited.pop(record.id, None)
        if event is not None:
            event.set()

    def _oom_killed(self, container_id: str) -> bool:
        places = (self._layout.bundle(container_id), self._layout.persist(container_id))
        return any((place / "oom").exists() for place in places)

    def _persisted_exit_code(self, container_id: str) -> int:
        try:
            return int((self._layout.persist(container_id) / "exit").read_text().strip())
        except (FileNotFoundError, ValueError):
            return _UNKNOWN_EXIT

    def _conmon_alive(self, container_id: str) -> bool:
        try:
            pid = int((self._layout.bundle(container_id) / "conmon-pidfile").read_text().strip())
            return Path(f"/proc/{pid}/comm").read_text().strip() == "conmon"
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False

    async def recover(self) -> None:
        """At start: bring CREATED/RUNNING records in line with what happened while we were down."""
        for name in await asyncio.to_thread(os.listdir, self._layout.exits):
            # conmon's temp files are "<id>.XXXXXX"; a sandbox ID's file is its infra container's.
            if "." not in name and self._records.sandbox(name) is None:
                await self.apply_exit(name)
        for record in self._records.containers.values():
            if record.state in LIVE:
                async with self._locks.hold(record.id):
                    await self._recover_one(record.id)

    async def _recover_one(self, container_id: str) -> None:
        record = self._records.container(container_id)
        if record is None or record.state not in LIVE:
            return
        runtime = self._runtimes.find(record.runtime_handler)
        state = await runtime.state(container_id) if runtime is not None else None
        if state is None:
            await self._record_exit(
                record, self._persisted_exit_code(container_id), time.time_ns(), reason="Error",
                message="the container's runtime state was lost (node rebooted, or its runtime state removed)")
            return
        if state.get("status") == "stopped" and not self._conmon_alive(container_id):
            await self._record_exit(record, self._persisted_exit_code(container_id), time.time_ns())
        # running/created/paused, or stopped with conmon about to write the exit file: the watcher has it.

    # -- stop / remove ----------------------------------------------------------------------

    async def stop(self, container_id: str, timeout: int) -> ContainerRecord:
        async with self._locks.hold(container_id):
            record = self._get(container_id)
            if record.state not in LIVE:
                if record.state == ContainerState.CREATING:
                    raise FailedPrecondition(f"container {container_id} is still being created")
                return record
            exited = self._exited.setdefault(container_id, asyncio.Event())
            if record.paused:
                # A frozen process takes no signal, SIGKILL included, until it is thawed.
                record = await self._resume(record)
            if record.state == ContainerState.CREATED:
                # Its init waits on runc's exec fifo and ignores signals until then; runc kill reaches it.
                await self._runtime_of(record).kill(container_id, "KILL")
                timeout = 0
            process = ProcessHandle(record.pid)
            if timeout > 0:
                process.send(signal_number(record.stop_signal or "SIGTERM"))
        with process:
            if timeout > 0 and await _wait(exited, timeout):
                return self._get(container_id)
            process.send(signal.SIGKILL)
            # conmon writes the exit file once it has reaped the container. With conmon gone
            # (OOM-killed, say) nobody will: then only the process's end is worth waiting for.
            monitored = self._conmon_alive(container_id)
            if monitored and await _wait(exited, _KILL_WAIT):
                return self._get(container_id)
            if not await process.wait_gone(0 if monitored else _KILL_WAIT):
                raise Internal(f"container {container_id} (pid {record.pid}) did not die after SIGKILL")
        # Dead, yet no exit file: conmon itself must be gone.
        async with self._locks.hold(container_id):
            record = self._get(container_id)
            if record.state in LIVE:
                await self._record_exit(record, self._persisted_exit_code(container_id), time.time_ns(),
                                        reason="Error", message="conmon did not report the exit")
            return self._get(container_id)

    async def remove(self, container_id: str) -> bool:
        record = self._records.container(container_id)
        if record is not None and record.state in LIVE:
            await self.stop(container_id, 0)
        async with self._locks.hold(container_id):
            record = self._records.container(container_id)
            if record is None:
                await asyncio.to_thread(self._remove_files, container_id)
                return False
            runtime = self._runtimes.find(record.runtime_handler)
            if runtime is not None:
                # CREATING here is a create that died with monitord: at most created, never started.
                await runtime.delete(container_id, force=record.state == ContainerState.CREATING)
            await asyncio.to_thread(self._remove_files, container_id)
            await self._records.delete_container(container_id)
            self._exited.pop(container_id, None)
        return True

    # -- pause / unpause (the status API, not the CRI) ----------------------------------------

    async def pause(self, container_id: str) -> ContainerRecord:
        async with self._locks.hold(container_id):
            record = self._get(container_id)
            if record.state != ContainerState.RUNNING or record.paused:
                state = "paused" if record.paused else record.state.value
                raise FailedPrecondition(f"container {container_id} is {state}, not running")
            await self._runtime_of(record).pause(container_id)
            return await self._records.put_container(dataclasses.replace(record, paused=True))

    async def unpause(self, container_id: str) -> ContainerRecord:
        async with self._locks.hold(container_id):
            record = self._get(container_id)
            if not record.paused:
                raise FailedPrecondition(f"container {container_id} is {record.state.value}, not paused")
            return await self._resume(record)

    async def _resume(self, record: ContainerRecord) -> ContainerRecord:
        await self._runtime_of(record).resume(record.id)
        return await self._records.put_container(dataclasses.replace(record, paused=False))

    # -- running containers -----------------------------------------------------------------

    async def exec_sync(self, req: ExecSyncRequest) -> ExecSyncResponse:
        record = self._get(req.id)
        if record.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {req.id} is {record.state.value}, not running")
        if not req.cmd:
            raise InvalidArgument("exec_sync needs a command")
        tty = container_tty(record.config_json)
        return await exec_sync(self._runtime_of(record), req.id, req.cmd, tty, req.timeout, Path(record.bundle))

    async def update_resources(self, req: UpdateResourcesRequest) -> ContainerRecord:
        resources = parse_config(req.resources_json, api_pb2.LinuxContainerResources, "resources_json")
        async with self._locks.hold(req.id):
            record = self._get(req.id)
            if record.state not in LIVE:
                raise FailedPrecondition(f"container {req.id} is {record.state.value}: its resources cannot change")
            await self._runtime_of(record).update(req.id, spec.linux_resources(resources))
            return await self._records.put_container(dataclasses.replace(record, resources_json=req.resources_json))

    async def reopen_log(self, container_id: str) -> None:
        record = self._get(container_id)
        if record.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {container_id} is {record.state.value}, not running")
        if record.log_path:
            await reopen_log(container_id, Path(record.bundle), record.log_path)

    async def stats(self, req: StatsRequest) -> StatsResponse:
        chosen = [self._records.container(i) for i in req.ids] if req.ids else self._records.containers.values()
        wanted = [r for r in chosen if r is not None and r.state != ContainerState.CREATING]
        return StatsResponse(tuple(await asyncio.to_thread(self._read_stats, wanted)))

    def _read_stats(self, records: list[ContainerRecord]) -> list[ContainerStats]:
        stats = []
        for record in records:
            cgroup = self._cgroups.get(record.id)
            if cgroup is None:
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    oci_spec = json.loads((Path(record.bundle) / "config.json").read_text())
                    cgroup = self._cgroups[record.id] = oci_spec["linux"]["cgroupsPath"]
            if cgroup:
                found = read_stats(record.id, cgroup, self._hierarchy)
                if found is not None:
                    stats.append(found)
        return stats


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
