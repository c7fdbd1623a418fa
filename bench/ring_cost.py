"""What the span ring costs each process: CPU seconds per pod lifecycle, ring on vs off.

Latency on this shared 2-core machine moves with whatever else runs; the CPU time each
criplex process spends (its own utime + stime, from /proc/PID/stat) over the same number of
pod lifecycles (start + stop + remove) moves much less, and it says which process pays.
The ring is switched by reload between blocks of one criplex; pod-ready p50 is printed beside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from bench.pods import Pods, Target, cleaned, criplex_toml, pull
from shared.cri import api_pb2_grpc
from tests.support.images import build_busybox_image
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import CriplexRun, wait_for

PROCESSES = ("gateway", "imaged", "storaged", "netd", "monitord", "streamd")
CPU_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
WARM_UP = 5
RINGS = (0, 2048)


def cpu_s(pid: int) -> float:
    """utime + stime of `pid` itself (not of its waited-for children: runc and conmon are not ours)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * CPU_TICK_S


@contextlib.contextmanager
def _criplex(registry: Registry, work: Path, pause: str, ring: int) -> Iterator[tuple[Target, CriplexRun]]:
    etc = Path(tempfile.mkdtemp(dir=work))
    parent = f"/bench-ring-{uuid.uuid4().hex[:8]}"
    run = CriplexRun(extra_toml=criplex_toml(registry, etc, pause, parent, "/usr/sbin/runc")
                     + f"[tracing]\nring_size = {ring}\n")
    target = Target("criplex", str(run.socket), run.base, b"conmon",
                    run.daemon_pids, parent)
    with cleaned(target, run.stop):
        run.start()
        yield target, run


class _Alternating:
    """Lifecycles in blocks, the ring switched on and off between blocks by a reload (SIGHUP):
    the same processes, heaps and caches measure both configurations, and drift of the shared
    machine falls on both alike."""

    def __init__(self, run: CriplexRun, pods: Pods, pids: dict[str, int]) -> None:
        self._run = run
        self._pods = pods
        self._pids = pids
        self._base = run.config_file.read_text().replace(f"[tracing]\nring_size = {RINGS[1]}\n", "")

    def set_ring(self, ring: int) -> None:
        marks = {s: self._run.log(s).count("configuration reloaded") for s in PROCESSES}
        self._run.config_file.write_text(self._base + f"[tracing]\nring_size = {ring}\n")
        self._run.supervisorctl("signal", "HUP", "all")
        for service in PROCESSES:
            wait_for(lambda s=service: self._run.log(s).count("configuration reloaded") > marks[s], 10,
                     f"{service} to reload")

    async def block(self, count: int) -> tuple[list[float], dict[str, float]]:
        before = {name: cpu_s(pid) for name, pid in self._pids.items()}
        ready = []
        for _ in range(count):
            start = await self._pods.start()
            ready.append(start.ready_s)
            await self._pods.stop(start.sandbox_id)
        return ready, {name: cpu_s(pid) - before[name] for name, pid in self._pids.items()}


async def _measure(run: CriplexRun, target: Target, image: str, logs: Path, blocks: int,
                   count: int) -> dict[int, tuple[list[float], dict[str, float], int]]:
    pids = {name: run.daemon_pid(name) for name in PROCESSES}
    figures: dict[int, tuple[list[float], dict[str, float], int]] = {
        ring: ([], dict.fromkeys(PROCESSES, 0.0), 0) for ring in RINGS}
    async with grpc.aio.insecure_channel(f"unix://{target.socket}") as channel:
        pods = Pods(target.name, api_pb2_grpc.RuntimeServiceStub(channel), image, logs, target.cgroup_parent)
        alternating = _Alternating(run, pods, pids)
        try:
            for _ in range(WARM_UP):
                await pods.stop((await pods.start()).sandbox_id)
            for n in range(blocks):
                for ring in (RINGS if n % 2 == 0 else RINGS[::-1]):
                    await asyncio.to_thread(alternating.set_ring, ring)
                    ready, used = await alternating.block(count)
                    all_ready, cpu, done = figures[ring]
                    all_ready += ready
                    figures[ring] = (all_ready, {p: cpu[p] + used[p] for p in PROCESSES}, done + count)
        finally:
            await pods.stop_all()
    return figures


def run(blocks: int = 8, count: int = 20) -> None:
    registry = Registry()
    work = Path(tempfile.mkdtemp(prefix="bench-ring-", dir="/tmp"))
    try:
        push(registry, "bench/busybox:1", build_busybox_image())
        push(registry, "bench/pause:1", build_busybox_image(cmd=("sleep", "2147483647")))
        image, pause = f"{registry.host}/bench/busybox:1", f"{registry.host}/bench/pause:1"
        with _criplex(registry, work, pause, RINGS[1]) as (target, crun):
            pull(target.socket, image, pause)
            logs = Path(tempfile.mkdtemp(dir=work))
            figures = asyncio.run(_measure(crun, target, image, logs, blocks, count))
        print(f"{blocks} blocks of {count} lifecycles per configuration, alternating, one criplex.\n")
        print(f"| ring | lifecycles | pod-ready p50 | CPU ms per lifecycle: {' / '.join(PROCESSES)} | sum |")
        print("|---|---|---|---|---|")
        for ring in RINGS:
            ready, cpu, done = figures[ring]
            print(f"| {ring or 'off'} | {done} | {statistics.median(ready) * 1000:.1f} ms | "
                  + " / ".join(f"{cpu[p] / done * 1000:.2f}" for p in PROCESSES)
                  + f" | {sum(cpu.values()) / done * 1000:.2f} |")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(*(int(a) for a in sys.argv[1:3]))
