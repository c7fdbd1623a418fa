"""Bytes and inodes used by the layer store and container upper dirs, measured and cached."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.schema.storaged import FsUsage

log = logging.getLogger(__name__)

# The kubelet asks for ImageFsInfo every few seconds; a walk of a big store takes
# longer than that, so callers get the last value and a refresh runs at most this often.
REFRESH_INTERVAL_S = 5.0


@dataclass(frozen=True)
class DiskUsage:
    bytes: int
    inodes: int

    def __add__(self, other: DiskUsage) -> DiskUsage:
        return DiskUsage(self.bytes + other.bytes, self.inodes + other.inodes)


def disk_usage(root: Path) -> DiskUsage:
    """Allocated bytes and inodes below `root`, like `du`: hard links once, same file system only."""
    try:
        top = os.lstat(root)
    except FileNotFoundError:
        return DiskUsage(0, 0)
    seen: set[int] = set()
    total_bytes, inodes = top.st_blocks * 512, 1
    stack = [os.fspath(root)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_dev != top.st_dev:
                    continue  # a mount below root (a container's merged view) is not ours to count
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total_bytes += st.st_blocks * 512
                inodes += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return DiskUsage(total_bytes, inodes)


def total_usage(roots: Iterable[Path]) -> DiskUsage:
    total = DiskUsage(0, 0)
    for root in roots:
        total += disk_usage(root)
    return total


class UsageMonitor:
    """Serves the last measurement at once; `run` refreshes it in the background when asked."""

    def __init__(self, layers_dir: Path, containers_dir: Path,
                 interval: float = REFRESH_INTERVAL_S) -> None:
        self._layers_dir = layers_dir
        self._containers_dir = containers_dir
        self._interval = interval
        self._last: FsUsage | None = None
        self._wanted = asyncio.Event()
        self._first = asyncio.Lock()

    async def current(self) -> FsUsage:
        if self._last is None:
            async with self._first:  # concurrent first calls share one walk
                if self._last is None:
                    await self._refresh()
        else:
            age_s = (time.time_ns() - self._last.timestamp_ns) / 1e9
            if age_s >= self._interval:
                self._wanted.set()
        assert self._last is not None
        return self._last

    def invalidate(self) -> None:
        """Something big changed (a layer came or went): refresh soon."""
        self._wanted.set()

    async def run(self) -> None:
        """Refresh when asked, never more often than every `interval` seconds; runs until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self._refresh()
            except OSError as exc:
                log.warning("measuring disk usage failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def _refresh(self) -> None:
        self._last = await asyncio.to_thread(self._measure)

    def _measure(self) -> FsUsage:
        images = disk_usage(self._layers_dir)
        uppers = (entry / "upper" for entry in _children(self._containers_dir))
        containers = total_usage(uppers)
        return FsUsage(
            timestamp_ns=time.time_ns(),
            mountpoint=str(self._layers_dir),
            image_bytes=images.bytes,
            image_inodes=images.inodes,
            container_mountpoint=str(self._containers_dir),
            container_bytes=containers.bytes,
            container_inodes=containers.inodes,
        )


def _children(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
