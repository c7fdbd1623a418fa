"""CRI configs and small helpers for pod and container tests, as the kubelet would send them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from shared.config import load_config
from shared.cri import api_pb2
from shared.cri.client import CriClient
from shared.tracing import Tracing
from shared.transport import DaemonClient
from shared.wire import Method
from tests.support.runtime import CriplexRun, wait_for


def sandbox_config(name: str | None = None, *, log_directory: str = "", host_network: bool = False,
                   labels: Mapping[str, str] | None = None, hostname: str = "",
                   dns: api_pb2.DNSConfig | None = None, pid: int = api_pb2.CONTAINER,
                   sysctls: Mapping[str, str] | None = None, cgroup_parent: str = "") -> api_pb2.PodSandboxConfig:
    name = name or f"pod-{uuid.uuid4().hex[:8]}"
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="criplex-test", uid=uuid.uuid4().hex, attempt=0),
        hostname=hostname or name,
        log_directory=log_directory,
        labels=dict(labels or {}),
        annotations={"criplex.test/annotation": "yes"},
    )
    if dns is not None:
        config.dns_config.CopyFrom(dns)
    linux = config.linux
    linux.cgroup_parent = cgroup_parent
    options = linux.security_context.namespace_options
    options.network = api_pb2.NODE if host_network else api_pb2.POD
    options.pid = pid
    options.ipc = api_pb2.POD
    linux.sysctls.update(dict(sysctls or {}))
    return config


def container_config(image: str, command: Iterable[str] = (), args: Iterable[str] = (), *, name: str = "ctr",
                     log_path: str = "", labels: Mapping[str, str] | None = None,
                     envs: Mapping[str, str] | None = None, tty: bool = False) -> api_pb2.ContainerConfig:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        log_path=log_path,
        labels=dict(labels or {}),
        annotations={"criplex.test/container": name},
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
        tty=tty,
    )


class Pods:
    """A criplex with an image pulled, and what a test made in it, removed at the end."""

    def __init__(self, run: CriplexRun, image: str) -> None:
        self.run = run
        self.image = image
        self.client: CriClient = run.client()
        self.sandboxes: list[str] = []
        self.etc = Path()  # where its containers files (registries.conf, hooks.d) are

    @property
    def rt(self) -> object:
        return self.client.runtime

    def run_pod(self, config: api_pb2.PodSandboxConfig | None = None, handler: str = "") -> str:
        config = config or sandbox_config()
        sid = self.client.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=60).pod_sandbox_id
        self.sandboxes.append(sid)
        return sid

    def create(self, sandbox_id: str, config: api_pb2.ContainerConfig,
               sandbox: api_pb2.PodSandboxConfig | None = None) -> str:
        if sandbox is not None and not config.linux.security_context.HasField("namespace_options"):
            # The kubelet repeats the pod's namespace options in every container's config.
            config.linux.security_context.namespace_options.CopyFrom(
                sandbox.linux.security_context.namespace_options)
        return self.client.runtime.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox or api_pb2.PodSandboxConfig()),
            timeout=60).container_id

    def start(self, container_id: str) -> None:
        self.client.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=60)

    def status(self, container_id: str) -> api_pb2.ContainerStatus:
        return self.client.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id), timeout=10).status

    def wait_state(self, container_id: str, state: int, timeout: float = 30.0) -> api_pb2.ContainerStatus:
        wait_for(lambda: self.status(container_id).state == state, timeout,
                 f"container {container_id[:12]} to reach {api_pb2.ContainerState.Name(state)}")
        return self.status(container_id)

    def run_container(self, command: Iterable[str], *, sandbox_id: str | None = None, log_dir: Path | None = None,
                      **kwargs: object) -> tuple[str, str]:
        sandbox = sandbox_config(log_directory=str(log_dir) if log_dir else "")
        sid = sandbox_id or self.run_pod(sandbox)
        cid = self.create(sid, container_config(self.image, command, log_path="ctr.log" if log_dir else "",
                                                **kwargs))  # type: ignore[arg-type]
        self.start(cid)
        return sid, cid

    def pull(self, reference: str) -> None:
        self.client.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=reference)), timeout=120)

    def exec(self, container_id: str, cmd: list[str], timeout: int = 10) -> api_pb2.ExecSyncResponse:
        return self.client.runtime.ExecSync(
            api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout), timeout=timeout + 20)

    def cleanup(self) -> None:
        """Stop and remove every pod this criplex has (each test module has its own criplex)."""
        with contextlib.suppress(grpc.RpcError):
            listed = self.client.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items
            self.sandboxes.extend(p.id for p in listed if p.id not in self.sandboxes)
        for sid in self.sandboxes:
            with contextlib.suppress(grpc.RpcError):
                self.client.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
            with contextlib.suppress(grpc.RpcError):
                self.client.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        self.sandboxes.clear()


def processes_mentioning(base: Path, program: bytes) -> list[int]:
    """PIDs of `program` (by argv[0]'s name) whose command line names `base`: a runtime's helpers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].rsplit(b"/", 1)[-1] == program and any(str(base).encode() in a for a in argv):
            found.append(int(entry.name))
    return found


def container_processes(run: CriplexRun) -> list[int]:
    """PIDs of conmon processes working for this criplex (their argv names its run dir)."""
    return processes_mentioning(run.base, b"conmon")


def kill_leftovers(run: CriplexRun) -> None:
    """Teardown's last resort: processes this test's criplex started that are still alive."""
    for pid in container_processes(run):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def daemon_call(run: CriplexRun, service: str, method: Method[Any, Any], request: object, timeout: float = 30.0
                ) -> Any:
    """Call a daemon directly, as the gateway would: to plant what a crashed gateway leaves."""
    config = load_config(str(run.config_file))

    async def go() -> Any:
        client = DaemonClient(service, config, Tracing("test", config.tracing))
        try:
            deadline = time.monotonic() + 5
            while not client.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return await client.call(method, request, timeout)
        finally:
            client.close()

    return asyncio.run(go())


def container_pid(pods: Pods, container_id: str) -> int:
    info = pods.client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=10).info
    return int(json.loads(info["info"])["pid"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_9(pods: Pods, service: str) -> None:
    pid = pods.run.daemon_pid(service)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _restarted(pods, service, pid), 30, f"supervisord to restart {service}")
    wait_for(pods.run.ready, 30, "criplex to be ready again")


def _restarted(pods: Pods, service: str, old: int) -> bool:
    try:
        return pods.run.daemon_pid(service) not in (0, old)
    except ValueError:
        return False
