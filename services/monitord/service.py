"""monitord: pod sandboxes and containers on an OCI runtime through conmon.

The handlers here only route; the lifecycle lives in `sandboxes.py` and `containers.py`.
`run()` loads the records, arms the exit watcher, reconciles what happened while monitord
was down, and then feeds exits to the containers (and a pod's infra container's, named by
its sandbox ID, to the sandboxes) for as long as the daemon lives.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from services.monitord import node_stats
from services.monitord.containers import Containers
from services.monitord.exit_watch import ExitDirWatch
from services.monitord.host_facts import read_host_facts
from services.monitord.layout import Layout
from services.monitord.oci_runtime import RuntimeHandlers
from services.monitord.records import StateRecords
from services.monitord.sandboxes import Sandboxes
from shared.config import Config
from shared.daemon import DaemonContext, Readiness, when_ready
from shared.errors import Unavailable
from shared.schema.common import MetricsReport
from shared.schema.monitord import (
    CONTAINER_STATS,
    CREATE_CONTAINER,
    CREATE_SANDBOX,
    EXEC_SYNC,
    LIST_STATE,
    PAUSE_CONTAINER,
    REMOVE_CONTAINER,
    REMOVE_SANDBOX,
    REOPEN_LOG,
    START_CONTAINER,
    START_SANDBOX,
    STOP_CONTAINER,
    STOP_SANDBOX,
    UNPAUSE_CONTAINER,
    UPDATE_RESOURCES,
    ContainerRecord,
    ContainerRef,
    CreateContainerRequest,
    CreateSandboxRequest,
    Done,
    ExecSyncRequest,
    ExecSyncResponse,
    ListStateRequest,
    ListStateResponse,
    RemoveContainerResponse,
    RemoveSandboxResponse,
    SandboxRecord,
    SandboxRef,
    StartSandboxRequest,
    StatsRequest,
    StatsResponse,
    StopContainerRequest,
    StopSandboxResponse,
    UpdateResourcesRequest,
)
from shared.transport import DaemonServer

log = logging.getLogger(__name__)



class MonitordService:
    def __init__(self, ctx: DaemonContext) -> None:
        self._config = ctx.config.monitord
        self.layout = Layout(ctx.state_dir, Path(ctx.config.paths.run_dir) / "monitord")
        self.records = StateRecords(self.layout, ctx.events)
        self.runtimes = RuntimeHandlers(self._config, ctx.config.paths.run_dir, ctx.tracing)
        self._containers: Containers | None = None
        self._sandboxes: Sandboxes | None = None
        self.loaded = asyncio.Event()
        self._load_error = ""

    def register(self, server: DaemonServer) -> None:
        server.register(CREATE_SANDBOX, when_ready(self.loaded, self.create_sandbox))
        server.register(START_SANDBOX, when_ready(self.loaded, self.start_sandbox))
        server.register(STOP_SANDBOX, when_ready(self.loaded, self.stop_sandbox))
        server.register(REMOVE_SANDBOX, when_ready(self.loaded, self.remove_sandbox))
        server.register(CREATE_CONTAINER, when_ready(self.loaded, self.create_container))
        server.register(START_CONTAINER, when_ready(self.loaded, self.start_container))
        server.register(STOP_CONTAINER, when_ready(self.loaded, self.stop_container))
        server.register(REMOVE_CONTAINER, when_ready(self.loaded, self.remove_container))
        server.register(EXEC_SYNC, when_ready(self.loaded, self.exec_sync))
        server.register(UPDATE_RESOURCES, when_ready(self.loaded, self.update_resources))
        server.register(REOPEN_LOG, when_ready(self.loaded, self.reopen_log))
        server.register(CONTAINER_STATS, when_ready(self.loaded, self.container_stats))
        server.register(LIST_STATE, when_ready(self.loaded, self.list_state))
        server.register(PAUSE_CONTAINER, when_ready(self.loaded, self.pause_container))
        server.register(UNPAUSE_CONTAINER, when_ready(self.loaded, self.unpause_container))


    @property
    def containers(self) -> Containers:
        if self._containers is None:
            raise Unavailable(f"monitord is not loaded: {self._load_error or 'starting'}")
        return self._containers

    @property
    def sandboxes(self) -> Sandboxes:
        if self._sandboxes is None:
            raise Unavailable(f"monitord is not loaded: {self._load_error or 'starting'}")
        return self._sandboxes

    async def run(self) -> None:
        watch = await self.load()
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    name = await watch.next_name()
                    if "." not in name:  # conmon's temp files are "<id>.XXXXXX", renamed when complete
                        group.create_task(self._on_exit(name))
        finally:
            watch.close()

    async def _on_exit(self, name: str) -> None:
        # One exit that cannot be recorded (a full disk) must not stop the watcher for all others.
        try:
            if self.sandboxes.owns_exit(name):
                await self.sandboxes.apply_infra_exit(name)
            else:
                await self.containers.apply_exit(name)
        except Exception:
            log.exception("recording the exit of %s failed", name)

    async def load(self) -> ExitDirWatch:
        """Load, arm the exit watcher, reconcile; handlers are served from here on."""
        await asyncio.to_thread(self.layout.ensure)
        await asyncio.to_thread(self.records.load)
        host = await asyncio.to_thread(read_host_facts, self._config)
        containers = Containers(self.records, self.layout, self._config, self.runtimes, host)
        watch = ExitDirWatch(self.layout.exits)
        watch.start()  # before the scan in recover(): an exit in between is then seen twice, never missed
        try:
            await containers.recover()
            sandboxes = Sandboxes(self.records, self.layout, self._config, self.runtimes, containers, host)
            await sandboxes.recover()
        except BaseException:
            watch.close()
            raise
        self._containers, self._sandboxes = containers, sandboxes
        self.loaded.set()
        log.info("monitord loaded %d pod sandboxes and %d containers", len(self.records.sandboxes),
                 len(self.records.containers))
        return watch

    def readiness(self) -> Readiness:
        missing = [p for p in (self._config.conmon, self._config.runtimes[self._config.default_runtime].path)
                   if not os.access(p, os.X_OK)]
        if missing:
            return Readiness(False, "RuntimeNotInstalled", f"not executable: {', '.join(missing)}")
        return Readiness(True, info={"default_runtime": self._config.default_runtime})

    def metrics(self) -> MetricsReport:
        return node_stats.report(self.containers.oom_kills)

    # -- sandboxes --------------------------------------------------------------------------

    async def create_sandbox(self, req: CreateSandboxRequest) -> SandboxRecord:
        return await self.sandboxes.create(req)

    async def start_sandbox(self, req: StartSandboxRequest) -> SandboxRecord:
        return await self.sandboxes.start(req)

    async def stop_sandbox(self, req: SandboxRef) -> StopSandboxResponse:
        return await self.sandboxes.stop(req.id)

    async def remove_sandbox(self, req: SandboxRef) -> RemoveSandboxResponse:
        return await self.sandboxes.remove(req.id)

    # -- containers -------------------------------------------------------------------------

    async def create_container(self, req: CreateContainerRequest) -> ContainerRecord:
        return await self.containers.create(req)

    async def start_container(self, req: ContainerRef) -> ContainerRecord:
        return await self.containers.start(req.id)

    async def stop_container(self, req: StopContainerRequest) -> ContainerRecord:
        return await self.containers.stop(req.id, req.timeout)

    async def remove_container(self, req: ContainerRef) -> RemoveContainerResponse:
        return RemoveContainerResponse(await self.containers.remove(req.id))

    async def exec_sync(self, req: ExecSyncRequest) -> ExecSyncResponse:
        return await self.containers.exec_sync(req)

    async def update_resources(self, req: UpdateResourcesRequest) -> ContainerRecord:
        return await self.containers.update_resources(req)

    async def reopen_log(self, req: ContainerRef) -> Done:
        await self.containers.reopen_log(req.id)
        return Done()

    async def container_stats(self, req: StatsRequest) -> StatsResponse:
        return await self.containers.stats(req)

    async def pause_container(self, req: ContainerRef) -> ContainerRecord:
        return await self.containers.pause(req.id)

    async def unpause_container(self, req: ContainerRef) -> ContainerRecord:
        return await self.containers.unpause(req.id)

    def on_reload(self, config: Config) -> None:
        """New runtime handlers serve new pods at once; a removed one refuses new pods, while the
        containers it already runs keep being stopped and removed through it."""
        self.runtimes.reload(config.monitord, config.paths.run_dir)

    async def list_state(self, _: ListStateRequest) -> ListStateResponse:
        return ListStateResponse(
            sandboxes=tuple(self.records.sandboxes.values()),
            containers=tuple(self.records.containers.values()),
            revision=self.records.revision,
        )
