"""A real monitord for tests: in-process or as its own process, with real runc and conmon.

Everything lives under a short /tmp/cx-* base (nng and conmon socket paths must fit in
sun_path), and containers go into a cgroup parent unique to the run, so teardown can find
and remove exactly what the test made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from google.protobuf import json_format

from services.monitord.service import MonitordService
from shared.config import Config, load_config
from shared.cri import api_pb2
from shared.daemon import DaemonContext
from shared.errors import DeadlineExceeded, Unavailable
from shared.schema.common import HEALTH, HealthRequest
from shared.schema.imaged import ImageRecord
from shared.schema.monitord import (
    CREATE_CONTAINER,
    CREATE_SANDBOX,
    START_CONTAINER,
    START_SANDBOX,
    ContainerRecord,
    ContainerRef,
    CreateContainerRequest,
    CreateSandboxRequest,
    SandboxRecord,
    StartSandboxRequest,
)
from shared.tracing import Tracing
from shared.transport import DaemonClient, EventPublisher
from tests.support.runtime import REPO, unmount_below

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "echo", "cat", "ls", "id", "true", "false", "kill", "head", "tr", "printf", "env",
           "hostname", "pwd", "wc", "dd", "yes", "seq", "ps")
CGROUP_CONTROLLERS = Path("/sys/fs/cgroup")


def make_rootfs(target: Path) -> Path:
    (target / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, target / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", target / "bin" / applet)
    (target / "etc").mkdir()
    (target / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (target / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    for directory in ("proc", "sys", "dev", "tmp", "root"):
        (target / directory).mkdir()
    return target


def image_record() -> ImageRecord:
    return ImageRecord(id="sha256:" + "ab" * 32, repo_tags=("test/busybox:latest",), repo_digests=(), size=0,
                       manifest_digest="", manifest_media_type="", config_digest="", chain_ids=(), diff_ids=(),
                       env=("PATH=/bin",), cmd=("sh",))


def new_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class MonitordWorld:
    """Directories, config and cleanup for one test; runs monitord in-process or as a process."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
        self.run_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.logs = self.base / "logs"
        self.cgroup_parent = f"/criplex-test-{uuid.uuid4().hex[:8]}"
        self.config_file = self.base / "criplex.toml"
        self.config_file.write_text(
            f'[paths]\nrun_dir = "{self.run_dir}"\nstate_dir = "{self.state_dir}"\nlog_dir = "{self.base}/log"\n'
            f'[monitord]\ndefault_cgroup_parent = "{self.cgroup_parent}"\n'
        )
        self.config: Config = load_config(str(self.config_file), etc_file=self.base / "none",
                                          dropin_dir=self.base / "none.d")
        self.rootfs_count = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._publishers: list[EventPublisher] = []

    # -- the pieces a test needs --------------------------------------------------------------

    def rootfs(self) -> Path:
        self.rootfs_count += 1
        return make_rootfs(self.base / f"rootfs{self.rootfs_count}")

    @property
    def runc_root(self) -> str:
        return self.config.monitord.runtime_root("runc", str(self.run_dir))

    def service(self) -> MonitordService:
        events = EventPublisher("monitord", self.config)
        self._publishers.append(events)
        ctx = DaemonContext("monitord", self.config, Tracing("monitord", self.config.tracing), events,
                            self.config.state_dir("monitord"), time.time())
        return MonitordService(ctx)

    def close_publishers(self) -> None:
        for events in self._publishers:
            events.close()
        self._publishers.clear()

    # -- monitord as a daemon process ------------------------------------------------------------

    def start_daemon(self) -> int:
        with open(self.base / "monitord.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.monitord", "--config", str(self.config_file)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )
        return self.proc.pid

    async def serving(self, client: DaemonClient, timeout: float = 30) -> None:
        """Wait until the daemon we started last answers (a restarted one: its new pid)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = await client.call(HEALTH, HealthRequest(), timeout=2)
                if health.pid == self.proc.pid:
                    return
            except (Unavailable, DeadlineExceeded):
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"monitord (pid {self.proc.pid}) is not serving; see {self.base}/monitord.log")
            await asyncio.sleep(0.05)

    async def restart_daemon(self, calls: Calls) -> None:
        """Start monitord again (after kill_daemon) and wait until it answers `calls`' client."""
        assert isinstance(calls.target, DaemonClient)
        self.start_daemon()
        await self.serving(calls.target)

    def kill_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def client(self) -> DaemonClient:
        return DaemonClient("monitord", self.config, Tracing("test", self.config.tracing))

    # -- teardown ----------------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.kill_daemon()
        self.close_publishers()
        bundles = self.run_dir / "monitord" / "bundles"
        if bundles.is_dir():
            for bundle in bundles.iterdir():
                subprocess.run(["runc", f"--root={self.runc_root}", "delete", "--force", bundle.name],
                               capture_output=True, check=False, timeout=30)
                pidfile = bundle / "conmon-pidfile"
                if pidfile.exists():
                    try:
                        pid = int(pidfile.read_text())
                        if Path(f"/proc/{pid}/comm").read_text().strip() == "conmon":
                            os.kill(pid, signal.SIGKILL)
                    except (ValueError, OSError):
                        pass
        unmount_below(self.base)
        remove_cgroups(self.cgroup_parent)
        shutil.rmtree(self.base, ignore_errors=True)


def remove_cgroups(parent: str) -> None:
    for controller in CGROUP_CONTROLLERS.iterdir():
        top = controller / parent.strip("/")
        if not top.is_dir() or top.is_symlink():
            continue
        directories = [p for p in top.rglob("*") if p.is_dir()] + [top]
        deadline = time.monotonic() + 5
        for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # tasks still dying in it: retry briefly
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)


# -- CRI configs ---------------------------------------------------------------------------------

def pod_config(name: str = "pod", log_directory: str = "", **linux: object) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=uuid.uuid4().hex, attempt=0),
        hostname=name, log_directory=log_directory,
    )
    config.dns_config.servers.append("10.0.0.10")
    config.dns_config.searches.append("default.svc.cluster.local")
    config.dns_config.options.append("ndots:5")
    # The kubelet's default: each container has its own PID namespace (POD, the proto's 0, would need an infra).
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    for key, value in linux.items():
        setattr(config.linux.security_context.namespace_options, key, value)
    return config


def container_config(name: str, args: list[str], log_path: str = "", memory_limit: int = 0,
                     tty: bool = False) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image="test/busybox:latest"), command=args, log_path=log_path, tty=tty,
    )
    if memory_limit:
        config.linux.resources.memory_limit_in_bytes = memory_limit
    return config


def to_json(message: object) -> str:
    return json_format.MessageToJson(message)  # type: ignore[arg-type]


class Calls:
    """The gateway's side: the same calls, either straight into a service or over nng."""

    def __init__(self, world: MonitordWorld, target: MonitordService | DaemonClient) -> None:
        self.world = world
        self.target = target

    async def call(self, method: object, req: object) -> object:
        if isinstance(self.target, DaemonClient):
            return await self.target.call(method, req, timeout=60)  # type: ignore[arg-type]
        handler = getattr(self.target, method.name)  # type: ignore[attr-defined]
        return await handler(req)

    async def ready_pod(self, config: api_pb2.PodSandboxConfig | None = None) -> SandboxRecord:
        sandbox_id = new_id()
        config = config or pod_config(log_directory=str(self.world.logs / "pod"))
        await self.call(CREATE_SANDBOX, CreateSandboxRequest(sandbox_id, to_json(config), ""))
        record = await self.call(START_SANDBOX, StartSandboxRequest(sandbox_id, ""))
        assert isinstance(record, SandboxRecord)
        return record

    async def create(self, pod: SandboxRecord, config: api_pb2.ContainerConfig) -> ContainerRecord:
        record = await self.call(CREATE_CONTAINER, CreateContainerRequest(
            new_id(), pod.id, to_json(config), image_record(), image_record().id, str(self.world.rootfs())))
        assert isinstance(record, ContainerRecord)
        return record

    async def run(self, pod: SandboxRecord, config: api_pb2.ContainerConfig) -> ContainerRecord:
        created = await self.create(pod, config)
        record = await self.call(START_CONTAINER, ContainerRef(created.id))
        assert isinstance(record, ContainerRecord)
        return record


@contextlib.asynccontextmanager
async def as_daemon(world: MonitordWorld) -> AsyncIterator[Calls]:
    """monitord as its own process, and calls to it over nng (what the gateway sees)."""
    world.start_daemon()
    client = world.client()
    try:
        await world.serving(client)
        yield Calls(world, client)
    finally:
        client.close()


@contextlib.asynccontextmanager
async def in_process(world: MonitordWorld) -> AsyncIterator[tuple[MonitordService, Calls]]:
    """monitord's service running in this event loop, as the daemon shell would run it."""
    service = world.service()
    task = asyncio.create_task(service.run())
    try:
        waiter = asyncio.create_task(service.loaded.wait())
        await asyncio.wait([waiter, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what stopped it
        assert service.loaded.is_set(), "monitord did not load within 30s"
        yield service, Calls(world, service)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        world.close_publishers()
