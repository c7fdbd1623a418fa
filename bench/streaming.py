"""Streaming, criplex beside containerd: exec round trips, port-forward and attach throughput.

Both runtimes serve the same busybox image from one local registry and are driven through
the same Python SPDY client (tests/support/spdy_client.py), so the client's own cost is in
both columns alike. Each runtime gets pods built the kubelet's way through its CRI socket:

- exec: Exec RPC → upgrade to SPDY → `true` → the v4 exit Status; p50 over EXEC_ROUNDS.
- port-forward: a pod pipes PF_MB of zeros into `busybox nc -l -p 9000`; the client reads
  PF_MB through one forwarded connection and the clock stops at the last byte.
- attach: a container waits for a line on stdin, then writes ATTACH_MB of zeros to stdout;
  the client attaches, sends the line, and counts stdout bytes to ATTACH_MB.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.pods import Target, containerd, criplex, ms, p50, pull
from shared.cri import api_pb2, api_pb2_grpc
from tests.support.images import build_busybox_image
from tests.support.pods import container_config, sandbox_config
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.spdy_client import PORT_FORWARD_PROTOCOLS, RemoteCommand, SpdyClient, run_exec

WARM_UP = 5
EXEC_ROUNDS = 50
PF_MB = 200
ATTACH_MB = 100
MB = 1024 * 1024
PF_PORT = 9000
TIMES = "\N{MULTIPLICATION SIGN}"

SENDER = ("sh", "-c", f"while true; do dd if=/dev/zero bs=1M count={PF_MB} 2>/dev/null | busybox nc -l -p {PF_PORT}; "
                      "done")
WRITER = ("sh", "-c", f"read go; dd if=/dev/zero bs=1M count={ATTACH_MB} 2>/dev/null; exec sleep 3600")


@dataclass(frozen=True)
class Figures:
    runtime: str
    exec_s: list[float]
    forward_mb_s: float
    attach_mb_s: float

    @property
    def exec_p50_s(self) -> float:
        return p50(self.exec_s)


class Pods:
    def __init__(self, rt: api_pb2_grpc.RuntimeServiceStub, image: str, log_root: Path, cgroup_parent: str) -> None:
        self.rt = rt
        self.image = image
        self.log_root = log_root
        self.cgroup_parent = cgroup_parent
        self.sandboxes: list[str] = []

    async def run(self, command: tuple[str, ...], *, stdin: bool = False) -> tuple[str, str]:
        name = f"stream-{uuid.uuid4().hex[:8]}"
        log_dir = self.log_root / name
        log_dir.mkdir()
        config = sandbox_config(name, log_directory=str(log_dir), cgroup_parent=self.cgroup_parent)
        config.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
        container = container_config(self.image, command, log_path="ctr.log")
        container.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
        container.stdin = stdin
        container.stdin_once = stdin
        sid = (await self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=120)).pod_sandbox_id
        self.sandboxes.append(sid)
        cid = (await self.rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=container, sandbox_config=config), timeout=120)).container_id
        await self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=120)
        return sid, cid

    async def remove_all(self) -> None:
        for sid in self.sandboxes:
            await self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
            await self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)


async def exec_round_trip(rt: api_pb2_grpc.RuntimeServiceStub, cid: str) -> float:
    started = time.perf_counter()
    url = (await rt.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True, stderr=True),
                         timeout=30)).url
    result = await run_exec(url)
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(f"exec true failed: {result.status}")
    return elapsed


async def forward_throughput(rt: api_pb2_grpc.RuntimeServiceStub, sid: str) -> float:
    """MB/s of PF_MB read through one forwarded connection; retried until nc listens."""
    deadline = time.monotonic() + 30
    while True:
        url = (await rt.PortForward(api_pb2.PortForwardRequest(pod_sandbox_id=sid, port=[PF_PORT]), timeout=30)).url
        client = await SpdyClient.connect(url, PORT_FORWARD_PROTOCOLS)
        try:
            headers = {"streamtype": "error", "port": str(PF_PORT), "requestid": "0"}
            error = await client.open_stream(headers)
            await error.close()
            started = time.perf_counter()
            data = await client.open_stream({**headers, "streamtype": "data"})
            received = 0
            async with asyncio.timeout(120):
                while received < PF_MB * MB and (chunk := await data.read()):
                    received += len(chunk)
            elapsed = time.perf_counter() - started
        finally:
            await client.close()
        if received >= PF_MB * MB:
            return received / MB / elapsed
        if time.monotonic() > deadline:
            raise RuntimeError(f"port-forward read only {received} bytes")
        await asyncio.sleep(0.2)  # nc is not listening yet (or between two connections)


async def attach_throughput(rt: api_pb2_grpc.RuntimeServiceStub, cid: str) -> float:
    url = (await rt.Attach(api_pb2.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True),
                           timeout=30)).url
    session = await RemoteCommand.open(url, stdin=True)
    assert session.stdin is not None and session.stdout is not None
    try:
        started = time.perf_counter()
        await session.stdin.write(b"go\n")
        received = 0
        async with asyncio.timeout(120):
            while received < ATTACH_MB * MB and (chunk := await session.stdout.read()):
                received += len(chunk)
        elapsed = time.perf_counter() - started
    finally:
        await session.client.close()
    if received < ATTACH_MB * MB:
        raise RuntimeError(f"attach read only {received} bytes")
    return received / MB / elapsed


async def measure(target: Target, image: str, log_root: Path) -> Figures:
    async with grpc.aio.insecure_channel(f"unix://{target.socket}") as channel:
        rt = api_pb2_grpc.RuntimeServiceStub(channel)
        pods = Pods(rt, image, log_root, target.cgroup_parent)
        try:
            _, sleeper = await pods.run(("sleep", "3600"))
            for _ in range(WARM_UP):
                await exec_round_trip(rt, sleeper)
            exec_s = [await exec_round_trip(rt, sleeper) for _ in range(EXEC_ROUNDS)]
            sender, _ = await pods.run(SENDER)
            forward = await forward_throughput(rt, sender)
            _, writer = await pods.run(WRITER, stdin=True)
            attach = await attach_throughput(rt, writer)
            return Figures(target.name, exec_s, forward, attach)
        finally:
            await pods.remove_all()


def report(ours: Figures, theirs: Figures) -> None:
    print(f"| runtime | exec `true` p50 ms (n={EXEC_ROUNDS}) | port-forward {PF_MB} MB, MB/s "
          f"| attach {ATTACH_MB} MB, MB/s |\n|---|---|---|---|")
    for f in (ours, theirs):
        print(f"| {f.runtime} | {ms(f.exec_p50_s)} | {f.forward_mb_s:,.0f} | {f.attach_mb_s:,.0f} |")
    rows = [
        ("exec round trip p50 ≤ containerd's", ms(ours.exec_p50_s), ms(theirs.exec_p50_s),
         ours.exec_p50_s <= theirs.exec_p50_s),
        (f"port-forward throughput ≥ 0.8{TIMES} containerd's", f"{ours.forward_mb_s:,.0f}",
         f"{theirs.forward_mb_s:,.0f}", ours.forward_mb_s >= 0.8 * theirs.forward_mb_s),
        (f"attach throughput ≥ 0.8{TIMES} containerd's", f"{ours.attach_mb_s:,.0f}", f"{theirs.attach_mb_s:,.0f}",
         ours.attach_mb_s >= 0.8 * theirs.attach_mb_s),
    ]
    print("\n### Goals\n\n| goal | criplex | containerd | met |\n|---|---|---|---|")
    for name, a, b, met in rows:
        print(f"| {name} | {a} | {b} | {'yes' if met else 'no'} |")
    print()


def run() -> None:
    registry = Registry()
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-", dir="/tmp"))
    try:
        push(registry, "bench/busybox:1", build_busybox_image())
        push(registry, "bench/pause:1", build_busybox_image(cmd=("sleep", "2147483647")))
        image, pause = f"{registry.host}/bench/busybox:1", f"{registry.host}/bench/pause:1"
        figures = []
        for runtime in (criplex(registry, work, pause), containerd(registry, pause)):
            with runtime as target:
                pull(target.socket, image, pause)
                logs = Path(tempfile.mkdtemp(dir=work))
                figures.append(asyncio.run(measure(target, image, logs)))
        print("## Streaming (Python SPDY client, same for both runtimes)\n")
        report(figures[0], figures[1])
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
