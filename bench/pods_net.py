"""Pods with real networks, criplex beside containerd: `python -m bench pods-net`.

Both runtimes get the same CNI chain (bridge + host-local + portmap) on bridges and subnets
of their own, and the same kubelet-shaped pods as `bench.pods`. Measured: pod ready and
stop + remove, sequentially, with the network set up and torn down by each runtime.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import grpc

from bench.pods import TIMES, Pods, PodStart, PodStop, Target, containerd, criplex, ms, p50, pct, pull
from shared.cri import api_pb2_grpc
from tests.support.images import build_busybox_image
from tests.support.push import push
from tests.support.registry import Registry

WARM_UP = 5
PODS = 30


def bridge_conflist(name: str, bridge: str, subnet: str, ipam_dir: Path) -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir), "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    })


async def _measure(target: Target, image: str, logs: Path) -> tuple[list[PodStart], list[PodStop]]:
    async with grpc.aio.insecure_channel(f"unix://{target.socket}") as channel:
        pods = Pods(target.name, api_pb2_grpc.RuntimeServiceStub(channel), image, logs, target.cgroup_parent)
        try:
            for _ in range(WARM_UP):
                await pods.stop((await pods.start()).sandbox_id)
            starts = [await pods.start() for _ in range(PODS)]
            stops = await pods.stop_all()
            return starts, stops
        finally:
            await pods.stop_all()


def run() -> None:
    registry = Registry()
    work = Path(tempfile.mkdtemp(prefix="bench-pods-net-", dir="/tmp"))
    bridges = [f"cxb{secrets.token_hex(3)}", f"cxb{secrets.token_hex(3)}"]
    octet = secrets.randbelow(200) + 20
    try:
        push(registry, "bench/busybox:1", build_busybox_image())
        push(registry, "bench/pause:1", build_busybox_image(cmd=("sleep", "2147483647")))
        image, pause = f"{registry.host}/bench/busybox:1", f"{registry.host}/bench/pause:1"
        results = []
        for runtime, bridge, subnet in (("criplex", bridges[0], f"10.198.{octet}.0/24"),
                                        ("containerd", bridges[1], f"10.197.{octet}.0/24")):
            conflist = bridge_conflist(f"bench-{runtime}", bridge, subnet, work / f"ipam-{runtime}")
            make = (criplex(registry, work, pause, conflist=conflist) if runtime == "criplex"
                    else containerd(registry, pause, conflist))
            with make as target:
                pull(target.socket, image, pause)
                logs = Path(tempfile.mkdtemp(dir=work))
                results.append((runtime, *asyncio.run(_measure(target, image, logs))))
        print(f"## Pods with networking: bridge + host-local + portmap, {PODS} sequential pods after "
              f"{WARM_UP} warm-ups\n")
        print("| runtime | pod ready p50 ms | p90 ms | RunPodSandbox p50 | stop + remove p50 ms | StopPodSandbox p50 |"
              "\n|---|---|---|---|---|---|")
        for runtime, starts, stops in results:
            ready = [s.ready_s for s in starts]
            print(f"| {runtime} | {ms(p50(ready))} | {ms(pct(ready, 0.9))} | {ms(p50([s.run_s for s in starts]))} "
                  f"| {ms(p50([s.total_s for s in stops]))} | {ms(p50([s.stop_sandbox_s for s in stops]))} |")
        (_, ours_start, ours_stop), (_, their_start, their_stop) = results
        ready_ratio = p50([s.ready_s for s in ours_start]) / p50([s.ready_s for s in their_start])
        stop_ours, stop_theirs = p50([s.total_s for s in ours_stop]), p50([s.total_s for s in their_stop])
        print(f"\nGoals: pod ready ≤ 0.8{TIMES} containerd's: {ready_ratio:.2f}{TIMES} "
              f"({'met' if ready_ratio <= 0.8 else 'not met'}); stop + remove ≤ containerd's: "
              f"{ms(stop_ours)} vs {ms(stop_theirs)} ({'met' if stop_ours <= stop_theirs else 'not met'})\n")
    finally:
        registry.stop()
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
