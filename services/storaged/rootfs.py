"""Container root filesystems: the image's layers under an overlay with the container's own upper dir.

On disk, under the storaged root:
  containers/<id>/upper, work   the container's writes and overlayfs' scratch dir
  containers/<id>/merged        the mounted overlay handed to the runtime
  containers/.trash-*           a removed container's dir being deleted
  records/rootfs/<id>.json      its RootfsRecord, which holds the chain

The record is written before the mount and deleted after the unmount, so a crash
in between leaves either a record to remount at start or a dir to clean up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from services.storaged.layer_store import TRASH_PREFIX, remove_tree
from services.storaged.mount import is_mountpoint, mount_overlay, unmount
from services.storaged.usage import disk_usage
from shared.errors import AlreadyExists, CriplexError, Internal, InvalidArgument
from shared.schema.storaged import Rootfs, RootfsUsage
from shared.state import RecordStore, fsync_dir

log = logging.getLogger(__name__)

# Also a directory name and part of overlay options, so no ':' or ',' (and no '/' or '..').
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RootfsRecord:
    container_id: str
    chain_id: str


def check_container_id(container_id: str) -> None:
    if not _CONTAINER_ID.match(container_id):
        raise InvalidArgument(f"container id {container_id!r:.150} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}")


class RootfsStore:
    def __init__(self, root: Path) -> None:
        self.containers_dir = root / "containers"
        self._records = RecordStore(root / "records" / "rootfs", RootfsRecord)

    def __len__(self) -> int:
        return len(self._records)

    def container_ids(self) -> list[str]:
        return [r.container_id for r in self._records.values()]

    def usage(self, container_ids: Iterable[str]) -> list[RootfsUsage]:
        """Bytes and inodes of each known container's upper dir (blocking: run it in a thread)."""
        out = []
        for container_id in container_ids:
            if container_id in self._records:
                used = disk_usage(self.containers_dir / container_id / "upper")
                out.append(RootfsUsage(container_id, used.bytes, used.inodes))
        return out

    def chains(self) -> set[str]:
        return {r.chain_id for r in self._records.values()}

    def merged(self, container_id: str) -> Path:
        return self.containers_dir / container_id / "merged"

    async def load(self, lowers_of: Callable[[str], list[Path]]) -> None:
        """Remove what no record explains, and remount recorded rootfs the containers rely on."""
        await asyncio.to_thread(self.containers_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
        records = await asyncio.to_thread(self._records.load)
        await asyncio.to_thread(self._sweep, set(records))
        for record in records.values():
            try:
                await asyncio.to_thread(self._mount, record.container_id, lowers_of(record.chain_id))
            except (CriplexError, OSError) as exc:
                # Not fatal: other containers still work; create_rootfs will try again.
                log.error("rootfs of %s not mounted at start: %s", record.container_id, exc)
        log.info("rootfs store loaded: %d container root filesystems", len(records))

    def _sweep(self, keep: set[str]) -> None:
        for entry in os.scandir(self.containers_dir):
            if entry.name in keep:
                continue
            if not entry.name.startswith(TRASH_PREFIX):
                log.warning("removing %s: no record", entry.path)
                try:
                    unmount(Path(entry.path) / "merged")
                except OSError as exc:
                    log.error("leaving %s in place: %s", entry.path, exc)
                    continue
            remove_tree(Path(entry.path))

    async def create(self, container_id: str, chain_id: str, lowers: list[Path]) -> Rootfs:
        """Mount the rootfs (idempotent: the same container and chain give the same mount)."""
        check_container_id(container_id)
        existing = self._records.get(container_id)
        if existing is not None and existing.chain_id != chain_id:
            raise AlreadyExists(f"container {container_id} already has a rootfs of layer {existing.chain_id}")
        if existing is None:
            await self._records.put(container_id, RootfsRecord(container_id, chain_id))
        try:
            await asyncio.to_thread(self._mount, container_id, lowers)
        except OSError as exc:
            if existing is None:
                await self.remove(container_id)
                await self.purge_trash()
            raise Internal(f"mounting the rootfs of {container_id}: {exc}") from None
        return Rootfs(container_id, chain_id, str(self.merged(container_id)))

    def _mount(self, container_id: str, lowers: list[Path]) -> None:
        base = self.containers_dir / container_id
        for name in ("upper", "work", "merged"):
            (base / name).mkdir(parents=True, exist_ok=True, mode=0o755)
        merged = base / "merged"
        if is_mountpoint(merged):
            return
        mount_overlay(merged, lowers, base / "upper", base / "work")
        log.info("rootfs of %s mounted (%d layers)", container_id, len(lowers))

    async def remove(self, container_id: str) -> str | None:
        """Unmount and forget the rootfs; the chain it held, None if there was none.

        Its files go to the trash (see `purge_trash`), so that deleting a big upper dir
        does not hold up the caller's lock.
        """
        check_container_id(container_id)
        base = self.containers_dir / container_id
        try:
            await asyncio.to_thread(unmount, base / "merged")
        except OSError as exc:
            raise Internal(f"unmounting the rootfs of {container_id}: {exc}") from None
        record = self._records.get(container_id)
        if record is not None:
            await self._records.delete(container_id)
        await asyncio.to_thread(self._to_trash, base)
        return record.chain_id if record is not None else None

    def _to_trash(self, base: Path) -> None:
        try:
            os.rename(base, self.containers_dir / f"{TRASH_PREFIX}{secrets.token_hex(8)}")
        except FileNotFoundError:
            return
        fsync_dir(self.containers_dir)

    async def purge_trash(self) -> None:
        await asyncio.to_thread(self._purge_trash)

    def _purge_trash(self) -> None:
        for entry in os.scandir(self.containers_dir):
            if entry.name.startswith(TRASH_PREFIX):
                remove_tree(Path(entry.path))
