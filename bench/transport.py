"""The bare nng hop: a client process calling a trivial method on a daemon process."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pynng

from bench.stats import Summary, summarize
from shared.config import Config, PathsConfig
from shared.schema.common import HEALTH, HealthRequest
from shared.tracing import Tracing
from shared.transport import DaemonClient

_DAEMON = textwrap.dedent("""
    import asyncio, os, sys, time
    from shared.config import Config, PathsConfig
    from shared.schema.common import HEALTH, Health
    from shared.tracing import Tracing
    from shared.transport import DaemonServer
    config = Config(paths=PathsConfig(run_dir=sys.argv[1]))
    server = DaemonServer("bench", config, Tracing("bench", config.tracing))
    async def health(_):
        return Health("bench", os.getpid(), 0.0, True)
    server.register(HEALTH, health)
    asyncio.run(server.serve())
""")


# The floor: nng's own round trip on this machine, blocking calls, no event loop, no codec.
_ECHO_SYNC = textwrap.dedent("""
    import sys, pynng
    sock = pynng.Rep0(listen=sys.argv[1])
    while True:
        sock.send(sock.recv())
""")


def nng_floor(base: str, calls: int) -> Summary:
    address = f"ipc://{base}/floor.sock"
    proc = subprocess.Popen([sys.executable, "-c", _ECHO_SYNC, address])
    try:
        with pynng.Req0() as sock:
            sock.dial(address, block=False)
            payload = b"x" * 64
            for _ in range(200):
                sock.send(payload)
                sock.recv()
            latencies = []
            started = time.perf_counter()
            for _ in range(calls):
                t = time.perf_counter()
                sock.send(payload)
                sock.recv()
                latencies.append(time.perf_counter() - t)
            return summarize("bare nng REQ/REP, blocking (floor)", 1, latencies, time.perf_counter() - started)
    finally:
        proc.kill()
        proc.wait()


async def _measure(client: DaemonClient, concurrency: int, calls: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await client.call(HEALTH, HealthRequest(), 5)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def run(calls: int = 5000) -> list[Summary]:
    base = tempfile.mkdtemp(prefix="cxb-", dir="/tmp")
    config = Config(paths=PathsConfig(run_dir=f"{base}/run"))
    proc = subprocess.Popen([sys.executable, "-c", _DAEMON, config.paths.run_dir],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    async def main() -> list[Summary]:
        client = DaemonClient("bench", config, Tracing("bench", config.tracing))
        while not client.connected:
            await asyncio.sleep(0.01)
        await _measure(client, 1, 500)  # warm-up
        out = []
        for concurrency in (1, 16):
            latencies, wall = await _measure(client, concurrency, calls)
            out.append(summarize("nng hop (health)", concurrency, latencies, wall))
        client.close()
        return out

    try:
        return [nng_floor(base, calls), *asyncio.run(main())]
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)
