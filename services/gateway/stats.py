"""Conversions from monitord's cgroup figures to the CRI stats messages."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from shared.cri import api_pb2
from shared.schema.monitord import CONTAINER_STATS, ContainerRecord, ContainerState, ContainerStats, StatsRequest
from shared.schema.storaged import ROOTFS_USAGE, RootfsUsage, RootfsUsageRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


def _u64(value: int) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=max(value, 0))


def to_cri_stats(record: ContainerRecord, config: api_pb2.ContainerConfig, stats: ContainerStats | None,
                 storage_mount: str, writable: RootfsUsage | None) -> api_pb2.ContainerStats:
    out = api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(
        id=record.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations))
    if stats is not None:
        out.cpu.timestamp = stats.timestamp_ns
        out.cpu.usage_core_nano_seconds.value = stats.cpu_usage_ns
        out.memory.timestamp = stats.timestamp_ns
        out.memory.working_set_bytes.CopyFrom(_u64(stats.memory_working_set_bytes))
        out.memory.usage_bytes.CopyFrom(_u64(stats.memory_usage_bytes))
        out.memory.rss_bytes.CopyFrom(_u64(stats.memory_rss_bytes))
        out.memory.page_faults.CopyFrom(_u64(stats.memory_page_faults))
        out.memory.major_page_faults.CopyFrom(_u64(stats.memory_major_page_faults))
    out.writable_layer.fs_id.mountpoint = storage_mount
    if writable is not None:
        out.writable_layer.timestamp = stats.timestamp_ns if stats is not None else time.time_ns()
        out.writable_layer.used_bytes.value = writable.bytes
        out.writable_layer.inodes_used.value = writable.inodes
    return out


async def container_stats(gw: Gateway, records: list[ContainerRecord], timeout: float
                          ) -> list[api_pb2.ContainerStats]:
    running = tuple(r.id for r in records if r.state is ContainerState.RUNNING)
    found: dict[str, ContainerStats] = {}
    written: dict[str, RootfsUsage] = {}
    cgroups = gw.monitord.call(CONTAINER_STATS, StatsRequest(running), timeout) if running else None
    uppers = gw.storaged.call(ROOTFS_USAGE, RootfsUsageRequest(tuple(r.id for r in records)), timeout)
    cgroup_stats, upper_usage = await asyncio.gather(cgroups or _none(), uppers, return_exceptions=True)
    if isinstance(cgroup_stats, BaseException):
        raise cgroup_stats
    if cgroup_stats is not None:
        found = {s.id: s for s in cgroup_stats.stats}
    if not isinstance(upper_usage, BaseException):  # storaged down: stats without the disk figure
        written = {u.container_id: u for u in upper_usage.usage}
    mount = str(gw.config.state_dir("storaged"))
    return [to_cri_stats(r, gw.view.container_config(r), found.get(r.id), mount, written.get(r.id))
            for r in records]


async def _none() -> None:
    return None


def pod_stats(gw: Gateway, sandbox_id: str, containers: list[api_pb2.ContainerStats],
              records: dict[str, ContainerRecord]) -> api_pb2.PodSandboxStats:
    sandbox = gw.view.sandboxes[sandbox_id]
    config = gw.view.sandbox_config(sandbox)
    out = api_pb2.PodSandboxStats(attributes=api_pb2.PodSandboxAttributes(
        id=sandbox_id, metadata=config.metadata, labels=config.labels, annotations=config.annotations))
    linux = out.linux
    linux.containers.extend(containers)
    cpu = sum(c.cpu.usage_core_nano_seconds.value for c in containers)
    working_set = sum(c.memory.working_set_bytes.value for c in containers)
    stamp = max((c.cpu.timestamp for c in containers), default=0)
    linux.cpu.timestamp = stamp
    linux.cpu.usage_core_nano_seconds.value = cpu
    linux.memory.timestamp = stamp
    linux.memory.working_set_bytes.value = working_set
    linux.memory.usage_bytes.value = sum(c.memory.usage_bytes.value for c in containers)
    linux.process.timestamp = stamp
    return out
