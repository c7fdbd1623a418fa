"""Pods and containers, criplex beside containerd: one registry, one machine, one run, one asyncio gRPC client.

Each runtime gets the same busybox image and the same pause image from a local registry, a CNI
configuration with only the loopback plugin, and pods shaped as the kubelet sends them for an
ordinary pod (network=POD, pid=CONTAINER, ipc=POD, a log directory and a log path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.containerd import Containerd
from bench.stats import HEADER, Summary, summarize
from shared.cri import api_pb2, api_pb2_grpc
from shared.cri.client import CriClient
from tests.pods.conftest import remove_cgroups
from tests.support.images import build_busybox_image
from tests.support.pods import container_config, processes_mentioning, sandbox_config
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import CriplexRun

WARM_UP = 5
SEQUENTIAL = 40
RUNNING = 50
CONCURRENT_PODS, IN_FLIGHT = 30, 10
LIFECYCLES, CPU_BATCHES = 20, 3
LIST_CALLS = 2000
EXEC_CALLS = 100
PROFILED = 30
CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class PodStart:
    sandbox_id: str
    container_id: str
    run_s: float
    create_s: float
    start_s: float

    @property
    def ready_s(self) -> float:
        return self.run_s + self.create_s + self.start_s


@dataclass(frozen=True)
class PodStop:
    stop_container_s: float
    remove_container_s: float
    stop_sandbox_s: float
    remove_sandbox_s: float

    @property
    def total_s(self) -> float:
        return self.stop_container_s + self.remove_container_s + self.stop_sandbox_s + self.remove_sandbox_s


@dataclass(frozen=True)
class Figures:
    """What one runtime measured; the report compares two of these."""

    runtime: str
    starts: list[PodStart]
    stops: list[PodStop]
    concurrent_wall_s: float
    calls: list[Summary]
    exec_p50_s: float
    cpu_s_per_lifecycle: list[float]  # one figure per batch: the machine is shared, so the least is the cleanest
    wall_s_per_lifecycle: float
    rss_mb: float
    rss_what: str
    helpers: int

    def call(self, name: str, concurrency: int) -> Summary:
        return next(s for s in self.calls if s.name.endswith(f" {name}") and s.concurrency == concurrency)


@dataclass
class Pods:
    """Makes and removes kubelet-shaped pods through one runtime's CRI socket."""

    runtime: str
    rt: api_pb2_grpc.RuntimeServiceStub
    image: str
    log_root: Path
    cgroup_parent: str
    made: dict[str, str] = field(default_factory=dict)  # sandbox ID -> container ID

    async def start(self) -> PodStart:
        name = f"bench-{uuid.uuid4().hex[:8]}"
        log_dir = self.log_root / name
        log_dir.mkdir()
        config = sandbox_config(name, log_directory=str(log_dir), cgroup_parent=self.cgroup_parent)
        container = container_config(self.image, ("sleep", "3600"), log_path="ctr_0.log")
        # What the kubelet sends when a pod names no seccomp profile (and --seccomp-default is off).
        config.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
        container.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
        t0 = time.perf_counter()
        sid = (await self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=120)).pod_sandbox_id
        t1 = time.perf_counter()
        self.made[sid] = ""
        cid = (await self.rt.CreateContainer(api_pb2.CreateContainerRequest(
            pod_sandbox_id=sid, config=container, sandbox_config=config), timeout=120)).container_id
        t2 = time.perf_counter()
        self.made[sid] = cid
        await self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=120)
        t3 = time.perf_counter()
        return PodStart(sid, cid, t1 - t0, t2 - t1, t3 - t2)

    async def stop(self, sid: str) -> PodStop:
        cid = self.made[sid]
        t0 = time.perf_counter()
        await self.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=120)
        t1 = time.perf_counter()
        await self.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=120)
        t2 = time.perf_counter()
        await self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        t3 = time.perf_counter()
        await self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=120)
        t4 = time.perf_counter()
        del self.made[sid]
        return PodStop(t1 - t0, t2 - t1, t3 - t2, t4 - t3)

    async def stop_all(self) -> list[PodStop]:
        return [await self.stop(sid) for sid in list(self.made)]


def cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) * CPU_TICK_S


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total_kb += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                             if line.startswith("VmRSS:"))
    return total_kb / 1024


async def call_rate(call: Callable[[], Awaitable[object]], concurrency: int, calls: int) -> tuple[list[float], float]:
    for _ in range(50):
        await call()
    latencies: list[float] = []

    async def worker() -> None:
        for _ in range(calls // concurrency):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


@dataclass(frozen=True)
class Target:
    """One runtime under test: where its socket is and which processes are its own."""

    name: str
    socket: str
    base: Path  # its conmons or shims name this directory on their command lines
    helper: bytes  # conmon or containerd-shim-runc-v2
    daemons: Callable[[], list[int]]
    cgroup_parent: str  # the pods' cgroup parent: swept when the bench ends


async def measure(target: Target, image: str, log_root: Path) -> Figures:
    async with grpc.aio.insecure_channel(f"unix://{target.socket}") as channel:
        pods = Pods(target.name, api_pb2_grpc.RuntimeServiceStub(channel), image, log_root, target.cgroup_parent)
        try:
            return await _measure(target, pods)
        finally:
            await pods.stop_all()


async def _measure(target: Target, pods: Pods) -> Figures:
    rt = pods.rt
    for _ in range(WARM_UP):
        await pods.stop((await pods.start()).sandbox_id)
    starts = [await pods.start() for _ in range(SEQUENTIAL)]
    while len(pods.made) < RUNNING:
        await pods.start()
    helpers = processes_mentioning(target.base, target.helper)
    rss = rss_mb(target.daemons() + helpers)
    any_container = starts[0].container_id
    requests: dict[str, Callable[[], Awaitable[object]]] = {
        "ListContainers": lambda: rt.ListContainers(api_pb2.ListContainersRequest(), timeout=10),
        "ListPodSandbox": lambda: rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10),
        "ContainerStatus": lambda: rt.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=any_container), timeout=10),
    }
    calls = []
    for name, request in requests.items():
        for concurrency in (1, 4):
            latencies, wall = await call_rate(request, concurrency, LIST_CALLS)
            calls.append(summarize(f"{target.name} {name}", concurrency, latencies, wall))
    exec_latencies, _ = await call_rate(lambda: rt.ExecSync(api_pb2.ExecSyncRequest(
        container_id=any_container, cmd=["true"], timeout=10), timeout=30), 1, EXEC_CALLS)
    stops = await pods.stop_all()

    started = time.perf_counter()
    in_flight = asyncio.Semaphore(IN_FLIGHT)

    async def one() -> None:
        async with in_flight:
            await pods.start()

    await asyncio.gather(*(one() for _ in range(CONCURRENT_PODS)))
    concurrent_wall = time.perf_counter() - started
    await pods.stop_all()

    cpu, walls = [], []
    for _ in range(CPU_BATCHES):
        cpu_before, wall_before = cpu_busy_s(), time.perf_counter()
        for _ in range(LIFECYCLES):
            await pods.stop((await pods.start()).sandbox_id)
        cpu.append((cpu_busy_s() - cpu_before) / LIFECYCLES)
        walls.append((time.perf_counter() - wall_before) / LIFECYCLES)
    wall = min(walls)
    return Figures(target.name, starts, stops, concurrent_wall, calls, statistics.median(exec_latencies), cpu, wall,
                   rss, f"{len(target.daemons())} daemon(s) + {len(helpers)} {target.helper.decode()}", len(helpers))


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def runc_floor(rounds: int = 30) -> tuple[float, float]:
    """`runc run -d`, then `runc kill` + `runc delete`, of a busybox bundle: what any runc-based runtime pays.

    Not `runc delete -f`: that polls for the exit every 100 ms, which no CRI runtime waits for.
    """
    work = Path(tempfile.mkdtemp(prefix="bench-runc-", dir="/tmp"))
    parent = f"/bench-runc-{uuid.uuid4().hex[:8]}"
    root = ["runc", "--root", str(work / "state")]
    try:
        rootfs = work / "bundle" / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        for d in ("proc", "sys", "dev", "tmp"):
            (rootfs / d).mkdir()
        shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
        for applet in ("sh", "sleep", "true"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        subprocess.run(["runc", "spec"], cwd=work / "bundle", check=True)
        spec_file = work / "bundle" / "config.json"
        spec = json.loads(spec_file.read_text())
        spec["process"].update(terminal=False, args=["sleep", "3600"])
        spec["root"]["readonly"] = True
        spec["linux"]["cgroupsPath"] = parent + "/ctr"
        spec_file.write_text(json.dumps(spec))
        runs, deletes = [], []
        for i in range(rounds + 3):
            t0 = time.perf_counter()
            subprocess.run([*root, "run", "-d", "-b", str(work / "bundle"), f"c{i}"], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t1 = time.perf_counter()
            pid = json.loads(subprocess.run([*root, "state", f"c{i}"], check=True, capture_output=True).stdout)["pid"]
            t2 = time.perf_counter()
            subprocess.run([*root, "kill", f"c{i}", "KILL"], check=True)
            while not gone(pid):
                time.sleep(0.0005)
            subprocess.run([*root, "delete", f"c{i}"], check=True)
            t3 = time.perf_counter()
            if i >= 3:
                runs.append(t1 - t0)
                deletes.append(t3 - t2)
        return statistics.median(runs), statistics.median(deletes)
    finally:
        for line in subprocess.run([*root, "list", "-q"], capture_output=True, text=True).stdout.split():
            subprocess.run([*root, "delete", "-f", line], capture_output=True)
        remove_cgroups(parent)
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: int
    trace_id: bytes
    start_ns: int
    end_ns: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """A tiny OTLP/gRPC collector in the bench process: criplex's spans break a CRI call down by hop."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes if a.key == "service.name"),
                           "?").removeprefix("criplex-")
            for scope in resource.scope_spans:
                self.spans.extend(Span(service, s.name, s.kind, s.trace_id, s.start_time_unix_nano,
                                       s.end_time_unix_nano) for s in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def breakdown(self, method: str) -> list[tuple[str, float, float]]:
        """(span, p50 ms, spans per call) for the spans under each `method` call, the call itself first."""
        traces = {s.trace_id for s in self.spans if s.name == f"runtime.v1/{method}"}
        by_name: dict[str, list[float]] = {}
        for s in self.spans:
            if s.trace_id in traces:
                kind = {2: "server", 3: "client"}.get(s.kind, "")
                by_name.setdefault(f"{s.service}: {s.name} ({kind})", []).append(s.ms)
        rows = [(name, statistics.median(ms), len(ms) / len(traces)) for name, ms in by_name.items()]
        return sorted(rows, key=lambda r: (not r[0].startswith("gateway: runtime.v1"), -r[1]))

    def stop(self) -> None:
        self.server.stop(grace=None)


def criplex_toml(registry: Registry, etc: Path, pause: str, cgroup_parent: str, runc: str) -> str:
    (etc / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    (etc / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (etc / "hooks.d").mkdir()
    return (f'[imaged]\nregistries_conf = "{etc}/registries.conf"\nregistries_conf_d = "{etc}/registries.conf.d"\n'
            f'policy = "{etc}/policy.json"\nauth_file = "{etc}/auth.json"\ncerts_dir = "{etc}/certs.d"\n'
            f'pause_image = "{pause}"\n'
            f'[monitord]\ndefault_cgroup_parent = "{cgroup_parent}"\nhooks_dirs = ["{etc}/hooks.d"]\n'
            f'[monitord.runtimes.runc]\npath = "{runc}"\n')


def pull(socket: str, *images: str) -> None:
    with CriClient(socket) as c:
        for image in images:
            c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=120)


def remove_every_pod(socket: str) -> None:
    """Teardown's CRI sweep: whatever a failed measurement left behind."""
    with contextlib.suppress(grpc.RpcError), CriClient(socket) as c:
        for pod in c.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items:
            with contextlib.suppress(grpc.RpcError):
                c.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
                c.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)


@contextlib.contextmanager
def cleaned(target: Target, stop: Callable[[], None]) -> Iterator[Target]:
    """Yield `target`; then remove its pods through CRI, stop it, and kill what a failure left."""
    try:
        yield target
    finally:
        remove_every_pod(target.socket)
        stop()
        remove_cgroups(target.cgroup_parent)
        for pid in processes_mentioning(target.base, target.helper):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def criplex(registry: Registry, work: Path, pause: str, tracing_port: int = 0, runc: str = "/usr/sbin/runc",
            conflist: str = "") -> Iterator[Target]:
    etc = Path(tempfile.mkdtemp(dir=work))
    parent = f"/bench-criplex-{uuid.uuid4().hex[:8]}"
    tracing = f'[tracing]\nendpoint = "http://127.0.0.1:{tracing_port}"\n' if tracing_port else ""
    run = CriplexRun(extra_toml=criplex_toml(registry, etc, pause, parent, runc) + tracing, cni_conflist=conflist)
    target = Target("criplex", str(run.socket), run.base, b"conmon",
                    run.daemon_pids, parent)
    with cleaned(target, run.stop):
        run.start()
        yield target


@contextlib.contextmanager
def containerd(registry: Registry, pause: str, conflist: str = "") -> Iterator[Target]:
    """With no `conflist`, a loopback-only network (see Containerd)."""
    runtime = Containerd(registry_host=registry.host, sandbox_image=pause, loopback_cni=not conflist,
                         conflist=conflist)
    target = Target("containerd", str(runtime.socket), runtime.base, b"containerd-shim-runc-v2", runtime.pids,
                    f"/bench-containerd-{uuid.uuid4().hex[:8]}")
    with cleaned(target, runtime.stop):
        runtime.start()
        yield target


def measure_runtime(target: Target, image: str, pause: str, work: Path) -> Figures:
    pull(target.socket, image, pause)
    logs = Path(tempfile.mkdtemp(dir=work))
    return asyncio.run(measure(target, image, logs))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def p50(values: list[float]) -> float:
    return statistics.median(values)


def report(figures: list[Figures], floor: tuple[float, float]) -> None:
    print(f"### Pod ready, sequential: {SEQUENTIAL} pods after {WARM_UP} warm-up lifecycles, image cached\n")
    print("| runtime | p50 ms | p90 ms | p99 ms | RunPodSandbox p50 | CreateContainer p50 | StartContainer p50 |\n"
          "|---|---|---|---|---|---|---|")
    for f in figures:
        ready = [s.ready_s for s in f.starts]
        print(f"| {f.runtime} | {ms(p50(ready))} | {ms(pct(ready, 0.9))} | {ms(pct(ready, 0.99))} "
              f"| {ms(p50([s.run_s for s in f.starts]))} | {ms(p50([s.create_s for s in f.starts]))} "
              f"| {ms(p50([s.start_s for s in f.starts]))} |")
    print(f"| `runc run -d` alone (floor) | {ms(floor[0])} | | | | | |\n")
    print(f"### Stop + remove, sequential, {RUNNING} pods (StopContainer timeout 0)\n")
    print("| runtime | p50 ms | StopContainer p50 | RemoveContainer p50 | StopPodSandbox p50 | RemovePodSandbox p50 |\n"
          "|---|---|---|---|---|---|")
    for f in figures:
        steps = [p50([s.total_s for s in f.stops]), p50([s.stop_container_s for s in f.stops]),
                 p50([s.remove_container_s for s in f.stops]), p50([s.stop_sandbox_s for s in f.stops]),
                 p50([s.remove_sandbox_s for s in f.stops])]
        print(f"| {f.runtime} | " + " | ".join(ms(v) for v in steps) + " |")
    print(f"| `runc kill KILL` + exit + `runc delete` alone (floor) | {ms(floor[1])} | | | | |\n")
    print(f"### {CONCURRENT_PODS} pod starts, {IN_FLIGHT} in flight\n\n| runtime | wall s | pods/s |\n|---|---|---|")
    for f in figures:
        print(f"| {f.runtime} | {f.concurrent_wall_s:.2f} | {CONCURRENT_PODS / f.concurrent_wall_s:.1f} |")
    print(f"\n### Calls with {RUNNING} pods running\n\n{HEADER}")
    for f in figures:
        for s in f.calls:
            print(s.row())
    print(f"\n### ExecSync `true`, 1 client, {EXEC_CALLS} calls\n\n| runtime | p50 ms |\n|---|---|")
    for f in figures:
        print(f"| {f.runtime} | {ms(f.exec_p50_s)} |")
    print(f"\n### Cost\n\nCPU: busy seconds of the whole machine (/proc/stat, client included) over {LIFECYCLES} "
          f"sequential lifecycles (start + stop + remove), divided by {LIFECYCLES}; {CPU_BATCHES} batches.\n")
    print(f"| runtime | CPU s per lifecycle, least | each batch | wall s per lifecycle | RSS MB with {RUNNING} pods "
          "| processes |\n|---|---|---|---|---|---|")
    for f in figures:
        print(f"| {f.runtime} | {min(f.cpu_s_per_lifecycle):.3f} | "
              + ", ".join(f"{c:.3f}" for c in f.cpu_s_per_lifecycle)
              + f" | {f.wall_s_per_lifecycle:.3f} | {f.rss_mb:.0f} | {f.rss_what} |")
    print()
    goals(*figures)


def goals(ours: Figures, theirs: Figures) -> None:
    def ready(f: Figures) -> float:
        return p50([s.ready_s for s in f.starts])

    def stop(f: Figures) -> float:
        return p50([s.total_s for s in f.stops])

    rows = [
        (f"pod ready p50 ≤ 0.8{TIMES} containerd's", ms(ready(ours)), ms(ready(theirs)),
         ready(ours) <= 0.8 * ready(theirs)),
        ("10-concurrent pods/s ≥ containerd's", f"{CONCURRENT_PODS / ours.concurrent_wall_s:.1f}",
         f"{CONCURRENT_PODS / theirs.concurrent_wall_s:.1f}", ours.concurrent_wall_s <= theirs.concurrent_wall_s),
        ("stop+remove p50 ≤ containerd's", ms(stop(ours)), ms(stop(theirs)), stop(ours) <= stop(theirs)),
    ]
    for name in ("ListContainers", "ListPodSandbox", "ContainerStatus"):
        a, b = ours.call(name, 4).per_second, theirs.call(name, 4).per_second
        rows.append((f"{name} calls/s at 4 clients ≥ 0.8{TIMES} containerd's", f"{a:,.0f}", f"{b:,.0f}", a >= 0.8 * b))
        a, b = ours.call(name, 1).p50_us, theirs.call(name, 1).p50_us
        rows.append((f"{name} p50 at 1 client ≤ 1 ms", f"{a / 1000:.2f} ms", f"{b / 1000:.2f} ms", a <= 1000))
    rows += [
        ("ExecSync p50 ≤ containerd's", ms(ours.exec_p50_s), ms(theirs.exec_p50_s),
         ours.exec_p50_s <= theirs.exec_p50_s),
        ("CPU s per lifecycle ≤ containerd's (least batch)", f"{min(ours.cpu_s_per_lifecycle):.3f}",
         f"{min(theirs.cpu_s_per_lifecycle):.3f}", min(ours.cpu_s_per_lifecycle) <= min(theirs.cpu_s_per_lifecycle)),
        (f"RSS with 50 pods ≤ 2{TIMES} containerd+shims", f"{ours.rss_mb:.0f} MB", f"{theirs.rss_mb:.0f} MB",
         ours.rss_mb <= 2 * theirs.rss_mb),
    ]
    print("### Goals\n\n| goal | criplex | containerd | met |\n|---|---|---|---|")
    for goal, a, b, met in rows:
        print(f"| {goal} | {a} | {b} | {'yes' if met else '**no**'} |")
    print()


async def traced_lifecycles(target: Target, image: str, log_root: Path, count: int) -> None:
    async with grpc.aio.insecure_channel(f"unix://{target.socket}") as channel:
        pods = Pods(target.name, api_pb2_grpc.RuntimeServiceStub(channel), image, log_root, target.cgroup_parent)
        try:
            for _ in range(count):
                await pods.start()
        finally:
            await pods.stop_all()


def wait_for_spans(sink: SpanSink) -> None:
    """The batch exporter sends every 200 ms: done once the count stops growing for a second."""
    seen, deadline = -1, time.monotonic() + 15
    while len(sink.spans) != seen and time.monotonic() < deadline:
        seen = len(sink.spans)
        time.sleep(1.0)


RUNC_COMMANDS = ("create", "start", "run", "exec", "kill", "delete", "state", "update", "pause", "resume", "ps")


def timed_runc(work: Path) -> tuple[Path, Path]:
    """A runc that appends `start_ns end_ns subcommand` per call to a log: runc's share of monitord's spans."""
    log = work / "runc-times.log"
    script = work / "timed-runc"
    script.write_text(f'#!/bin/sh\nstarted=$(date +%s%N)\n/usr/sbin/runc "$@"\nrc=$?\n'
                      f'echo "$started $(date +%s%N) $*" >> {log}\nexit $rc\n')
    script.chmod(0o755)
    return script, log


@dataclass(frozen=True)
class RuncCall:
    command: str
    start_ns: int
    end_ns: int


def runc_calls(log: Path) -> list[RuncCall]:
    calls = []
    for line in log.read_text().splitlines() if log.exists() else ():
        start, end, *argv = line.split()
        command = next((a for a in argv if a in RUNC_COMMANDS), "?")
        calls.append(RuncCall(command, int(start), int(end)))
    return calls


def runc_share(sink: SpanSink, calls: list[RuncCall]) -> None:
    """For each monitord method: its p50, and the p50 of each runc subcommand run inside it."""
    print("| monitord method | p50 ms | runc calls inside (p50 ms each) | p50 ms outside runc |\n|---|---|---|---|")
    spans: dict[str, list[Span]] = {}
    for span in sink.spans:
        if span.service == "monitord" and span.kind == 2:
            spans.setdefault(span.name, []).append(span)
    for name, group in sorted(spans.items()):
        inside: dict[str, list[float]] = {}
        outside = []
        for span in group:
            within = [c for c in calls if span.start_ns <= c.start_ns and c.end_ns <= span.end_ns]
            for c in within:
                inside.setdefault(c.command, []).append((c.end_ns - c.start_ns) / 1e6)
            outside.append(span.ms - sum(c.end_ns - c.start_ns for c in within) / 1e6)
        runs = ", ".join(f"{cmd} {p50(ms_):.1f} ({len(ms_) / len(group):.1f}/call)" for cmd, ms_ in inside.items())
        print(f"| {name} | {p50([s.ms for s in group]):.1f} | {runs or '-'} | {p50(outside):.1f} |")
    print()


def profile(registry: Registry, work: Path, image: str, pause: str) -> None:
    sink = SpanSink()
    runc, runc_log = timed_runc(work)
    try:
        with criplex(registry, work, pause, sink.port, str(runc)) as target:
            pull(target.socket, image, pause)
            logs = Path(tempfile.mkdtemp(dir=work))
            asyncio.run(traced_lifecycles(target, image, logs, WARM_UP))
            wait_for_spans(sink)
            sink.spans.clear()
            runc_log.unlink(missing_ok=True)
            asyncio.run(traced_lifecycles(target, image, logs, PROFILED))
            wait_for_spans(sink)
    finally:
        sink.stop()
    print(f"### Where criplex's time goes (OTLP spans, {PROFILED} pods, tracing on)\n")
    print("| CRI call | span | p50 ms | spans per call |\n|---|---|---|---|")
    for method in ("RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
                   "StopPodSandbox", "RemovePodSandbox"):
        for span, median, per_call in sink.breakdown(method):
            print(f"| {method} | {span} | {median:.1f} | {per_call:.1f} |")
    print("\nrunc's share of monitord's handlers (runc wrapped by a shell script that logs each call's "
          "start and end; the wrapper adds ~2 ms per runc call):\n")
    runc_share(sink, runc_calls(runc_log))


def run(with_profile: bool = True) -> None:
    registry = Registry()
    work = Path(tempfile.mkdtemp(prefix="bench-pods-", dir="/tmp"))
    try:
        push(registry, "bench/busybox:1", build_busybox_image())
        push(registry, "bench/pause:1", build_busybox_image(cmd=("sleep", "2147483647")))
        image, pause = f"{registry.host}/bench/busybox:1", f"{registry.host}/bench/pause:1"
        floor = runc_floor()
        figures = []
        with criplex(registry, work, pause) as target:
            figures.append(measure_runtime(target, image, pause, work))
        with containerd(registry, pause) as target:
            figures.append(measure_runtime(target, image, pause, work))
        print("## Pods and containers (asyncio gRPC client, one channel per runtime)\n")
        report(figures, floor)
        if with_profile:
            profile(registry, work, image, pause)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
