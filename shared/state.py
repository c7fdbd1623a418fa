"""Crash-safe per-daemon records on disk: one JSON file per record, replaced atomically.

Why files and atomic rename rather than SQLite (see ARCHITECTURE.md): records are
few (images, layers, containers), independent and written rarely; a record is
either its old or its new file after a kill -9 at any instant (write to a temp
file, fsync, rename, fsync the directory), a damaged file can only ever affect
its own record, and an admin can read the state with `cat`. Writes are done off
the event loop; reads come from the in-memory copy loaded at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Generic, TypeVar

from shared.typed import ShapeError, from_plain, to_plain

log = logging.getLogger(__name__)

T = TypeVar("T")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,200}$")
_TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data`: `os.write` may take only part of it (a nearly full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content.

    A failed write (a full disk, say) raises and leaves the old content in place.
    """
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class RecordStore(Generic[T]):
    """Records of one dataclass type keyed by a string, mirrored in memory."""

    def __init__(self, directory: Path, record_type: type[T]) -> None:
        self._dir = directory
        self._type = record_type
        self._records: dict[str, T] = {}
        self._lock = asyncio.Lock()
        # Changes with every put and delete; starts from the clock so that a restarted
        # daemon never repeats a generation a client may have cached.
        self.generation = time.time_ns()

    def load(self) -> dict[str, T]:
        """Read every record (at start, before serving); leftovers of interrupted writes are removed."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for entry in self._dir.iterdir():
            if entry.name.startswith(_TMP_PREFIX):
                entry.unlink(missing_ok=True)
                continue
            if entry.suffix != ".json":
                continue
            try:
                record = from_plain(self._type, json.loads(entry.read_bytes()))
            except (ValueError, ShapeError) as exc:
                # Kept aside, not deleted: an admin may want to look at it.
                log.error("unreadable record %s set aside: %s", entry, exc)
                entry.rename(entry.with_suffix(".corrupt"))
                continue
            self._records[entry.stem] = record
        return dict(self._records)

    def get(self, key: str) -> T | None:
        return self._records.get(key)

    def values(self) -> list[T]:
        return list(self._records.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._records.items())

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    async def put(self, key: str, record: T) -> None:
        """Persist, then publish in memory: an acknowledged record survives a crash."""
        if not _KEY.match(key):
            raise ValueError(f"bad record key {key!r}")
        data = json.dumps(to_plain(record), separators=(",", ":")).encode()
        async with self._lock:
            await asyncio.to_thread(write_atomic, self._dir / f"{key}.json", data)
            self._records[key] = record
            self.generation += 1

    async def delete(self, key: str) -> None:
        async with self._lock:
            path = self._dir / f"{key}.json"
            if path.exists():
                await asyncio.to_thread(self._unlink, path)
            if self._records.pop(key, None) is not None:
                self.generation += 1

    @staticmethod
    def _unlink(path: Path) -> None:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
