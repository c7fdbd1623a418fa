"""Pod sandbox lifecycle: what a pod owns apart from its network and its containers.

A pod gets its own IPC and UTS namespaces, pinned (bind-mounted) under its sandbox dir so
they exist before and after any of its processes, plus a /dev/shm tmpfs, and the hostname,
hosts and resolv.conf files its containers bind-mount. No infra ("pause") process is needed
for any of this, as with CRI-O's drop_infra_ctr; only a pod that shares one PID namespace
gets one (infra.py), started with the pod and killed with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from services.monitord.containers import LIVE, Containers
from services.monitord.cri_config import parse_config, sandbox_name
from services.monitord.infra import InfraContainers, missing_infra_rootfs, needs_infra
from services.monitord.layout import Layout
from services.monitord.oci_runtime import RuntimeHandlers
from services.monitord.records import StateRecords
from services.monitord.sandbox_files import hosts_content, mount_shm, resolv_content, unmount
from services.monitord.spec.inputs import HostFacts
from services.monitord.spec.namespaces import pod_hostname
from shared import nsfs
from shared.config import MonitordConfig, parse_size
from shared.cri import api_pb2
from shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from shared.locks import KeyedLock
from shared.schema.monitord import (
    CreateSandboxRequest,
    RemoveSandboxResponse,
    SandboxRecord,
    SandboxState,
    StartSandboxRequest,
    StopSandboxResponse,
)

log = logging.getLogger(__name__)

HOST_SHM = "/dev/shm"
HOST_HOSTS = Path("/etc/hosts")


class Sandboxes:
    def __init__(self, records: StateRecords, layout: Layout, config: MonitordConfig, runtimes: RuntimeHandlers,
                 containers: Containers, host: HostFacts) -> None:
        self._records = records
        self._layout = layout
        self._shm_bytes = parse_size(config.shm_size)
        self._runtimes = runtimes
        self._containers = containers
        self._infra = InfraContainers(layout, config, host)
        self._locks: KeyedLock[str] = KeyedLock()
        self._names = asyncio.Lock()

    def _get(self, sandbox_id: str) -> SandboxRecord:
        record = self._records.sandbox(sandbox_id)
        if record is None:
            raise NotFound(f"pod sandbox {sandbox_id} not found")
        return record

    async def create(self, req: CreateSandboxRequest) -> SandboxRecord:
        config = parse_config(req.config_json, api_pb2.PodSandboxConfig, "config_json")
        name = sandbox_name(config)
        handler = self._runtimes.resolve(req.runtime_handler)
        async with self._names:
            for other in self._records.sandboxes.values():
                if other.name == name:
                    raise AlreadyExists(f"pod sandbox name {name} is reserved for pod sandbox {other.id}")
            if req.id in self._records.sandboxes:
                raise AlreadyExists(f"pod sandbox {req.id} already exists")
            await self._locks.acquire(req.id)
            try:
                record = await self._records.put_sandbox(SandboxRecord(
                    id=req.id, name=name, config_json=req.config_json, runtime_handler=handler,
                    state=SandboxState.CREATING, created_at=time.time_ns(), revision=0,
                    cgroup_parent=config.linux.cgroup_parent,
                ))
            except BaseException:
                self._locks.release(req.id)
                raise
        try:
            try:
                record = await self._make_pod_parts(record, config)
            except BaseException:
                await asyncio.shield(self._discard(req.id))
                raise
            return await self._records.put_sandbox(record)
        finally:
            self._locks.release(req.id)

    async def _make_pod_parts(self, record: SandboxRecord, config: api_pb2.PodSandboxConfig) -> SandboxRecord:
        directory = self._layout.sandbox_dir(record.id)
        await asyncio.to_thread(directory.mkdir, 0o755, True, True)
        options = config.linux.security_context.namespace_options
        host_ipc = options.ipc == api_pb2.NODE
        host_network = options.network == api_pb2.NODE
        hostname = pod_hostname(config)
        pins: dict[str, Path] = {}
        if not host_ipc:
            pins["ipc"] = directory / "ipc"
        if not host_network:  # a host-network pod keeps the host's UTS namespace too, as with CRI-O
            pins["uts"] = directory / "uts"
        # net.* sysctls belong to the network namespace, which netd makes and configures.
        sysctls = {k: v for k, v in config.linux.sysctls.items() if not k.startswith(("net.", "net/"))}
        if not pins and sysctls:
            raise InvalidArgument(f"sysctls {', '.join(sorted(sysctls))} need the pod's own IPC namespace")
        shm_path = HOST_SHM if host_ipc else str(directory / "shm")
        resolv = resolv_content(config.dns_config)
        # Independent steps, each in its own thread: a pod's start waits for the slowest only.
        steps = [asyncio.to_thread(self._write_files, directory, hostname, host_network, resolv)]
        if pins:
            steps.append(nsfs.create_pinned(pins, hostname if "uts" in pins else "", sysctls))
        if not host_ipc:
            steps.append(asyncio.to_thread(mount_shm, Path(shm_path), self._shm_bytes))
        failures = [r for r in await asyncio.gather(*steps, return_exceptions=True) if isinstance(r, BaseException)]
        if failures:
            raise failures[0]  # the caller's cleanup removes whatever the other steps made
        return dataclasses.replace(
            record,
            ipc_path=str(pins["ipc"]) if "ipc" in pins else "",
            uts_path=str(pins["uts"]) if "uts" in pins else "",
            shm_path=shm_path,
            hostname_path=str(directory / "hostname"),
            hosts_path=str(directory / "hosts"),
            resolv_path=str(directory / "resolv.conf"),
        )

    @staticmethod
    def _write_files(directory: Path, hostname: str, host_network: bool, resolv: str) -> None:
        (directory / "hostname").write_text(hostname + "\n")
        if host_network:
            hosts = HOST_HOSTS.read_text() if HOST_HOSTS.exists() else hosts_content(hostname)
        else:
            hosts = hosts_content(hostname)
        (directory / "hosts").write_text(hosts)
        (directory / "resolv.conf").write_text(resolv)
        for name in ("hostname", "hosts", "resolv.conf"):
            os.chmod(directory / name, 0o644)

    async def _discard(self, sandbox_id: str) -> None:
        record = self._records.sandbox(sandbox_id)
        await self._dismantle(sandbox_id, record.runtime_handler if record is not None else "")
        await self._records.delete_sandbox(sandbox_id)

    async def _dismantle(self, sandbox_id: str, runtime_handler: str = "") -> None:
        """Remove whatever of the pod's parts exists; safe on a half-made pod and when repeated."""
        # Keyed by the sandbox ID whether or not the record got as far as naming it: a start
        # that died with monitord may have left one.
        await self._infra.remove(sandbox_id, self._runtimes.find(runtime_handler))
        directory = self._layout.sandbox_dir(sandbox_id)
        await asyncio.to_thread(unmount, directory / "shm")
        for kind in ("ipc", "uts"):
            await nsfs.remove_pinned(directory / kind)
        await asyncio.to_thread(shutil.rmtree, directory, True)

    async def start(self, req: StartSandboxRequest) -> SandboxRecord:
        async with self._locks.hold(req.id):
            record = self._get(req.id)
            if record.state == SandboxState.READY:
                return record
            if record.state != SandboxState.CREATING:
                raise FailedPrecondition(f"pod sandbox {req.id} is {record.state.value}: a stopped pod cannot start")
            config = parse_config(record.config_json, api_pb2.PodSandboxConfig, "the pod's config")
            infra = needs_infra(config)
            pause = req.infra_image if infra else None
            if infra and (pause is None or not req.infra_rootfs):
                raise missing_infra_rootfs(req.id)
            if req.ips and record.uts_path:
                hostname = Path(record.hostname_path).read_text().strip()
                await asyncio.to_thread(Path(record.hosts_path).write_text, hosts_content(hostname, req.ips))
            record = dataclasses.replace(record, netns_path=req.netns_path, ips=tuple(req.ips))
            if pause is not None:
                # The infra container joins the netns, so it can only start now that netd made it.
                pid = await self._infra.run(record, config, req.infra_rootfs, pause,
                                            self._runtimes.get(record.runtime_handler))
                record = dataclasses.replace(record, infra_container_id=record.id, infra_pid=pid)
            try:
                return await self._records.put_sandbox(dataclasses.replace(record, state=SandboxState.READY))
            except BaseException:
                if pause is not None:
                    await asyncio.shield(self._infra.remove(record.id, self._runtimes.find(record.runtime_handler)))
                raise

    async def stop(self, sandbox_id: str) -> StopSandboxResponse:
        self._get(sandbox_id)
        # The kubelet has already stopped the containers gracefully; what is left is killed now.
        live = [c.id for c in self._records.containers_of(sandbox_id) if c.state in LIVE]
        await asyncio.gather(*(self._containers.stop(container_id, 0) for container_id in live))
        # NOTREADY before the infra container dies, so its exit reads as asked for, not as a failure.
        async with self._locks.hold(sandbox_id):
            record = self._get(sandbox_id)
            if record.state == SandboxState.READY:
                await self._records.put_sandbox(dataclasses.replace(record, state=SandboxState.NOTREADY))
        await self._kill_infra(self._get(sandbox_id))
        return StopSandboxResponse(tuple(live))

    async def remove(self, sandbox_id: str) -> RemoveSandboxResponse:
        if self._records.sandbox(sandbox_id) is None:
            await self._dismantle(sandbox_id)
            return RemoveSandboxResponse((), existed=False)
        container_ids = tuple(c.id for c in self._records.containers_of(sandbox_id))
        await asyncio.gather(*(self._containers.remove(container_id) for container_id in container_ids))
        record = self._records.sandbox(sandbox_id)
        if record is not None:
            await self._kill_infra(record)
        async with self._locks.hold(sandbox_id):
            if self._records.sandbox(sandbox_id) is None:
                return RemoveSandboxResponse(container_ids, existed=False)
            await self._discard(sandbox_id)
        return RemoveSandboxResponse(container_ids, existed=True)

    async def _kill_infra(self, record: SandboxRecord) -> None:
        # Never under the pod's lock: the exit watcher takes it to record the exit this waits for.
        runtime = self._runtimes.find(record.runtime_handler)
        if record.infra_container_id and runtime is not None:
            await self._infra.kill(record.id, runtime)

    async def apply_infra_exit(self, sandbox_id: str) -> None:
        """conmon wrote `<exits>/<sandbox id>`: the pod's PID namespace is gone with its infra
        container, so the pod is not ready any more and the kubelet recreates it."""
        async with self._locks.hold(sandbox_id):
            record = self._records.sandbox(sandbox_id)
            if record is not None and record.state == SandboxState.READY and record.infra_container_id:
                log.warning("the infra container of pod sandbox %s exited: now not ready", sandbox_id)
                await self._records.put_sandbox(dataclasses.replace(record, state=SandboxState.NOTREADY))
            # Under the lock, a CREATING pod is not mid-start: the file is from a start that failed.
            await asyncio.to_thread(self._layout.exit_file(sandbox_id).unlink, True)
        self._infra.exited(sandbox_id)

    async def recover(self) -> None:
        """At start: a READY pod whose namespaces or infra container are gone (a reboot, an
        admin, an exit while monitord was down) can never run again."""
        for record in list(self._records.sandboxes.values()):
            if await asyncio.to_thread(self._layout.exit_file(record.id).exists):
                await self.apply_infra_exit(record.id)
        for record in list(self._records.sandboxes.values()):
            if record.state != SandboxState.READY:
                continue
            pins = [p for p in (record.ipc_path, record.uts_path, record.netns_path) if p]
            lost = [p for p in pins if not nsfs.is_pinned(Path(p))]
            if record.infra_container_id and not await self._infra.running(
                    record, self._runtimes.find(record.runtime_handler)):
                lost.append(f"its infra container (pid {record.infra_pid})")
            if lost:
                log.warning("pod sandbox %s lost %s: now not ready", record.id, ", ".join(lost))
                await self._records.put_sandbox(dataclasses.replace(record, state=SandboxState.NOTREADY))

    def owns_exit(self, name: str) -> bool:
        """Is `<exits>/<name>` an infra container's? Its name is its pod's sandbox ID."""
        return self._records.sandbox(name) is not None
