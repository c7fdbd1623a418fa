"""imaged's records of stored images, and how a CRI image string finds one.

Records live in a RecordStore (one JSON file per image, keyed by the config
digest) and are served from memory. A lookup accepts what the kubelet and crictl
send: a full ID ("sha256:<hex>" or bare hex), a unique ID prefix, a tag or a
repo digest, the last two also as short names, which mean each name the
registries.conf search would try.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path

from services.imaged.reference import ImageReference
from shared.errors import InvalidArgument
from shared.locks import KeyedLock
from shared.schema.imaged import ImageRecord
from shared.state import RecordStore

_HEX_PREFIX = re.compile(r"^(?:sha256:)?([a-f0-9]{3,64})$")
_MIN_PREFIX = 3  # shorter prefixes are more likely typos than intent


def lookup(records: list[ImageRecord], query: str, names: list[ImageReference]) -> ImageRecord | None:
    """The record `query` means. `names` are the qualified references it may stand for
    (see registries_conf.candidates); empty when `query` is not a reference at all."""
    for record in records:
        if query in (record.id, record.id.removeprefix("sha256:")):
            return record
    for ref in names:
        for record in records:
            if ref.digest and ref.digested_name in record.repo_digests:
                return record
            if not ref.digest and ref.tagged_name in record.repo_tags:
                return record
    m = _HEX_PREFIX.match(query)
    if m and len(m.group(1)) >= _MIN_PREFIX:
        matches = [r for r in records if r.id.removeprefix("sha256:").startswith(m.group(1))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidArgument(f"image ID prefix {query!r} is ambiguous ({len(matches)} images)")
    return None


def is_image_id(query: str) -> bool:
    """An image ID or an ID prefix ("sha256:<hex>", "<hex>"), which may be no valid reference."""
    return _HEX_PREFIX.match(query) is not None


def pinned_for(record: ImageRecord, pause_names: tuple[str, ...]) -> bool:
    return any(n in record.repo_tags or n in record.repo_digests for n in pause_names)


class ImageStore:
    def __init__(self, directory: Path) -> None:
        self._records: RecordStore[ImageRecord] = RecordStore(directory, ImageRecord)
        # A pull's name moves touch several records: one writer at a time keeps names unique.
        self._lock = asyncio.Lock()
        self._image_locks: KeyedLock[str] = KeyedLock()

    def load(self) -> list[ImageRecord]:
        return list(self._records.load().values())

    def all(self) -> list[ImageRecord]:
        return self._records.values()

    @property
    def generation(self) -> int:
        """Changes whenever any record does: lets clients cache a listing."""
        return self._records.generation

    def image_lock(self, image_id: str) -> AbstractAsyncContextManager[None]:
        """Held around "storaged reference + record" steps of one image (pull and removal),
        so that neither sees the other half done: otherwise a removal could release the
        reference between a pull's two steps and leave a record whose layers storaged is
        free to delete."""
        return self._image_locks.hold(image_id)

    def get(self, image_id: str) -> ImageRecord | None:
        return self._records.get(image_id)

    def find(self, query: str, names: list[ImageReference]) -> ImageRecord | None:
        return lookup(self._records.values(), query, names)

    async def add(self, record: ImageRecord, pause_names: tuple[str, ...]) -> ImageRecord:
        """Store a pulled image: merge with its existing record, and take its names from other images.

        A tag (or repo digest) names one image; when it moves, the old image keeps
        its record, possibly without any name (a dangling image, as in CRI-O),
        until it is removed.
        """
        async with self._lock:
            return await self._add(record, pause_names)

    async def _add(self, record: ImageRecord, pause_names: tuple[str, ...]) -> ImageRecord:
        existing = self._records.get(record.id)
        if existing is not None:
            record = replace(
                record,
                repo_tags=_union(existing.repo_tags, record.repo_tags),
                repo_digests=_union(existing.repo_digests, record.repo_digests),
            )
        record = replace(record, pinned=pinned_for(record, pause_names))
        for other in self._records.values():
            if other.id == record.id:
                continue
            tags = tuple(t for t in other.repo_tags if t not in record.repo_tags)
            digests = tuple(d for d in other.repo_digests if d not in record.repo_digests)
            if tags != other.repo_tags or digests != other.repo_digests:
                moved = replace(other, repo_tags=tags, repo_digests=digests)
                await self._records.put(other.id, replace(moved, pinned=pinned_for(moved, pause_names)))
        await self._records.put(record.id, record)
        return record

    async def delete(self, image_id: str) -> None:
        async with self._lock:
            await self._records.delete(image_id)


def _union(old: tuple[str, ...], new: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*old, *new)))
