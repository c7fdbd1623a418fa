"""Run the benchmarks side by side with containerd and print markdown for bench/RESULTS.md.

    python -m bench            # everything
    python -m bench transport  # only the named parts: transport, cri, rss, images, pods, streaming, storm
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

from bench import cri, transport
from bench.containerd import Containerd
from bench.stats import HEADER
from tests.support.runtime import CriplexRun


def _field(path: str, prefix: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in Path(path).read_text().splitlines()
                 if line.startswith(prefix)), "?")


def _machine() -> str:
    cpu = _field("/proc/cpuinfo", "model name") or platform.processor()
    mem_gib = int(_field("/proc/meminfo", "MemTotal").split()[0]) // 1024 // 1024
    return f"{cpu}, {subprocess.getoutput('nproc')} cores, {mem_gib} GiB, Linux {platform.release()}"


def rss_mb(pid: int) -> float:
    return int(_field(f"/proc/{pid}/status", "VmRSS").split()[0]) / 1024


def main(parts: list[str]) -> None:
    parts = parts or ["transport", "cri", "rss", "images", "pods", "pods-net", "streaming", "storm"]
    print(f"# criplex bench, {time.strftime('%Y-%m-%d')}\n\nMachine: {_machine()}\n")
    if "transport" in parts:
        print("## nng hop (client process → daemon process, trivial method)\n")
        print(HEADER)
        for s in transport.run():
            print(s.row())
        print()
    criplex = CriplexRun().start() if {"cri", "rss", "images"} & set(parts) else None
    containerd = Containerd().start() if {"cri"} & set(parts) else None
    try:
        if "cri" in parts:
            print("## CRI calls through the runtime's socket (asyncio gRPC client)\n")
            print(HEADER)
            assert criplex is not None and containerd is not None
            for s in cri.run("criplex", str(criplex.socket), ("Version", "Status", "ImageFsInfo", "ListImages")):
                print(s.row())
            for s in cri.run("containerd", str(containerd.socket), ("Version", "Status", "ImageFsInfo",
                                                                     "ListImages")):
                print(s.row())
            print()
        if "rss" in parts:
            assert criplex is not None
            print("## Idle RSS per daemon\n\n| daemon | RSS MB |\n|---|---|")
            for service in ("gateway", "imaged", "storaged", "netd", "monitord"):
                print(f"| {service} | {rss_mb(criplex.daemon_pid(service)):.1f} |")
            print()
        if "images" in parts:
            from bench import images

            assert criplex is not None
            images.run(criplex)
    finally:
        if containerd is not None:
            containerd.stop()
        if criplex is not None:
            criplex.stop()
    if "pods-net" in parts:
        from bench import pods_net

        pods_net.run()
    if "pods" in parts:
        from bench import pods

        pods.run()
    if "observability" in parts:
        from bench import observability

        observability.run()
    if "storm" in parts:
        from bench import storm

        storm.run()
    if "streaming" in parts:
        from bench import streaming

        streaming.run()


if __name__ == "__main__":
    main(sys.argv[1:])
