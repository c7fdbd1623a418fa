"""Which top layer chain each image holds: one small file, replaced whole and atomically.

One file rather than a record per image because `sync_images` swaps the entire
set, which must not be seen half done after a crash; the map is small (one line
per image) and written only when images come or go.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from shared.state import write_atomic
from shared.typed import ShapeError, from_plain, to_plain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageRefsRecord:
    images: dict[str, str] = field(default_factory=dict)  # image id -> top chain id


class ImageRefs:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._images: dict[str, str] = {}

    def load(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in self._path.parent.glob(f".tmp-{self._path.name}.*"):  # see write_atomic
            leftover.unlink(missing_ok=True)
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            return
        try:
            self._images = dict(from_plain(ImageRefsRecord, json.loads(data)).images)
        except (ValueError, ShapeError) as exc:
            # Kept for an admin; imaged's sync_images at its start restores the references.
            log.error("unreadable image references %s set aside: %s", self._path, exc)
            self._path.rename(self._path.with_suffix(".corrupt"))

    @property
    def images(self) -> dict[str, str]:
        return dict(self._images)

    def chains(self) -> set[str]:
        return set(self._images.values())

    async def replace(self, images: dict[str, str]) -> None:
        """Persist, then publish: an acknowledged reference survives a crash."""
        if images == self._images:
            return
        data = json.dumps(to_plain(ImageRefsRecord(dict(images))), separators=(",", ":"), sort_keys=True)
        await asyncio.to_thread(write_atomic, self._path, data.encode())
        self._images = dict(images)
