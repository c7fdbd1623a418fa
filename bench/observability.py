"""What metrics and the span ring cost a pod start: pod-ready p50 with both on, and with both off.

"Off" is `tracing.ring_size = 0` and `[metrics] enable = false` (no spans are recorded at all);
"on" is the default ring (2048 spans) plus `/metrics`, scraped every SCRAPE_EVERY_S as a
Prometheus would. The two configurations alternate in rounds, each a fresh criplex, so drift
of the shared machine falls on both alike. Pod-ready is RunPodSandbox + CreateContainer +
StartContainer, as the kubelet waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx

from bench.pods import Pods, Target, cleaned, criplex_toml, pull
from shared.cri import api_pb2_grpc
from tests.support.images import build_busybox_image
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import CriplexRun

ROUNDS = 3
PODS_PER_ROUND = 25
WARM_UP = 3
SCRAPE_EVERY_S = 5.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _criplex(registry: Registry, work: Path, pause: str, observed: bool) -> Iterator[tuple[Target, str]]:
    etc = Path(tempfile.mkdtemp(dir=work))
    parent = f"/bench-obs-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    extra = (f'[metrics]\nenable = true\nport = {port}\n' if observed else '[tracing]\nring_size = 0\n')
    run = CriplexRun(extra_toml=criplex_toml(registry, etc, pause, parent, "/usr/sbin/runc") + extra)
    target = Target("criplex", str(run.socket), run.base, b"conmon",
                    run.daemon_pids, parent)
    with cleaned(target, run.stop):
        run.start()
        yield target, f"http://127.0.0.1:{port}/metrics" if observed else ""


async def _pod_ready(target: Target, image: str, logs: Path, metrics_url: str) -> tuple[list[float], float]:
    """Pod-ready seconds of each pod, and the mean scrape time (0 without metrics)."""
    scrapes: list[float] = []

    async def scraper() -> None:
        async with httpx.AsyncClient() as http:
            while True:
                t0 = time.perf_counter()
                (await http.get(metrics_url, timeout=5)).raise_for_status()
                scrapes.append(time.perf_counter() - t0)
                await asyncio.sleep(SCRAPE_EVERY_S)

    async with grpc.aio.insecure_channel(f"unix://{target.socket}") as channel:
        pods = Pods(target.name, api_pb2_grpc.RuntimeServiceStub(channel), image, logs, target.cgroup_parent)
        scraping = asyncio.create_task(scraper()) if metrics_url else None
        try:
            for _ in range(WARM_UP):
                await pods.stop((await pods.start()).sandbox_id)
            ready = []
            for _ in range(PODS_PER_ROUND):
                start = await pods.start()
                ready.append(start.ready_s)
                await pods.stop(start.sandbox_id)
        finally:
            if scraping is not None:
                scraping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scraping
            await pods.stop_all()
    return ready, statistics.mean(scrapes) if scrapes else 0.0


def run() -> None:
    registry = Registry()
    work = Path(tempfile.mkdtemp(prefix="bench-obs-", dir="/tmp"))
    try:
        push(registry, "bench/busybox:1", build_busybox_image())
        push(registry, "bench/pause:1", build_busybox_image(cmd=("sleep", "2147483647")))
        image, pause = f"{registry.host}/bench/busybox:1", f"{registry.host}/bench/pause:1"
        figures: dict[bool, list[float]] = {False: [], True: []}
        scrape_s: list[float] = []
        for _ in range(ROUNDS):
            for observed in (False, True):
                with _criplex(registry, work, pause, observed) as (target, url):
                    pull(target.socket, image, pause)
                    logs = Path(tempfile.mkdtemp(dir=work))
                    ready, scrape = asyncio.run(_pod_ready(target, image, logs, url))
                    figures[observed] += ready
                    if scrape:
                        scrape_s.append(scrape)
        off, on = statistics.median(figures[False]), statistics.median(figures[True])
        print("## Observability: metrics + span ring, on vs off\n")
        print("| configuration | pods | pod-ready p50 | p90 |\n|---|---|---|---|")
        for observed, label in ((False, "off (ring_size = 0, metrics off)"),
                                (True, "on (ring 2048, /metrics scraped every 5 s)")):
            values = sorted(figures[observed])
            print(f"| {label} | {len(values)} | {statistics.median(values) * 1000:.1f} ms | "
                  f"{values[int(len(values) * 0.9)] * 1000:.1f} ms |")
        print(f"\nCost: {(on - off) / off * 100:+.1f} % of pod-ready p50 (goal <= 5 %). "
              f"A scrape takes {statistics.mean(scrape_s) * 1000:.1f} ms (all daemons asked in parallel).\n")
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run()
