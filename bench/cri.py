"""CRI calls through a runtime's socket with an asyncio gRPC client: criplex and containerd alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from bench.stats import Summary, summarize
from shared.cri import api_pb2, api_pb2_grpc

Call = Callable[[Any, Any], Any]

CALLS: dict[str, Call] = {
    "Status": lambda rt, im: rt.Status(api_pb2.StatusRequest(), timeout=10),
    "Version": lambda rt, im: rt.Version(api_pb2.VersionRequest(), timeout=10),
    "ImageFsInfo": lambda rt, im: im.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10),
    "ListImages": lambda rt, im: im.ListImages(api_pb2.ListImagesRequest(), timeout=10),
}


async def _measure(socket: str, name: str, concurrency: int, calls: int) -> tuple[list[float], float]:
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        rt = api_pb2_grpc.RuntimeServiceStub(channel)
        im = api_pb2_grpc.ImageServiceStub(channel)
        call = CALLS[name]
        for _ in range(200):
            await call(rt, im)
        latencies: list[float] = []
        per_worker = calls // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                started = time.perf_counter()
                await call(rt, im)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def run(runtime: str, socket: str, names: tuple[str, ...], calls: int = 5000) -> list[Summary]:
    out = []
    for name in names:
        for concurrency in (1, 16):
            latencies, wall = asyncio.run(_measure(socket, name, concurrency, calls))
            out.append(summarize(f"{runtime} {name}", concurrency, latencies, wall))
    return out
