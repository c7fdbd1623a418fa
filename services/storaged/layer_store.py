"""The layer store: unpacked layers keyed by chain ID, how they arrive and how they go.

On disk, under the storaged root:
  layers/<chain-hex>/diff   the unpacked layer, what overlayfs stacks
  layers/.tmp-*             an unpack in progress (or interrupted)
  layers/.trash-*           a removed layer being deleted
  records/layers/<hex>.json its LayerRecord
  incoming/<blob>           compressed blobs imaged hands over

A layer becomes visible in this order: unpack into a tmp dir, syncfs, rename to
its final name, write its record. Removal runs backwards: record, rename to trash,
delete. So at start a dir without a record (or a tmp/trash dir) is debris, and a
record without its dir is a lie; `load` removes both, and every layer whose parent
went with them, since a chain with a hole cannot be mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.storaged.blob_reader import BlobReader, Follow
from services.storaged.compression import check_digest
from services.storaged.unpack import unpack_blob
from shared.errors import (
    CriplexError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from shared.pod_starts import PodStartSignal
from shared.schema.storaged import ApplyLayerRequest, Layer
from shared.state import RecordStore, fsync_dir

log = logging.getLogger(__name__)

UNPACK_WORKERS = 4
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class LayerRecord:
    chain_id: str
    parent_chain_id: str
    diff_id: str
    size: int
    inodes: int
    created_at: float

    def layer(self) -> Layer:
        return Layer(self.chain_id, self.parent_chain_id, self.diff_id, self.size, self.inodes)


def chain_id_of(parent_chain_id: str, diff_id: str) -> str:
    """image-spec config.md "Layer ChainID": DiffID for the bottom layer, else sha256(parent + " " + DiffID)."""
    if not parent_chain_id:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent_chain_id} {diff_id}".encode()).hexdigest()


def unreferenced(parents: Mapping[str, str], pinned: AbstractSet[str],
                 start: Iterable[str] | None = None) -> list[str]:
    """Layers nothing needs any more, each listed after all of its children.

    `parents` maps every stored chain to its parent ("" at the bottom); a layer is
    needed while it is pinned (an image, a rootfs, an unpack on top of it) or has a
    child. From `start` only those chains and the parents they free are considered;
    with None, every layer is.
    """
    children = Counter(p for p in parents.values() if p)
    stack = list(parents if start is None else start)
    out: list[str] = []
    gone: set[str] = set()
    while stack:
        chain = stack.pop()
        if chain in gone or chain not in parents or chain in pinned or children[chain] > 0:
            continue
        gone.add(chain)
        out.append(chain)
        parent = parents[chain]
        if parent:
            children[parent] -= 1
            stack.append(parent)
    return out


def _no_pause() -> None:
    pass


def _key(chain_id: str) -> str:
    return chain_id.partition(":")[2]


def remove_tree(path: Path) -> None:
    """rm -rf without following symlinks (shutil's fd-based walk); a missing path is fine."""

    def report(_func: object, failed: str, info: tuple[type[BaseException], BaseException, object]) -> None:
        if not isinstance(info[1], FileNotFoundError):  # a concurrent purge got there first
            log.warning("cannot remove %s: %s", failed, info[1])

    shutil.rmtree(path, onerror=report)


def _host_error(exc: OSError, what: str) -> CriplexError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{what}: {exc.strerror}")
    return Internal(f"{what}: {exc}")


# How long a child layer, fully unpacked, waits for its parent to be applied.
PARENT_WAIT_S = 60.0


class LayerStore:
    def __init__(self, root: Path, pod_starts: PodStartSignal | None = None) -> None:
        self._pause = pod_starts.pause if pod_starts is not None else _no_pause
        self.layers_dir = root / "layers"
        self.incoming_dir = root / "incoming"
        self._records = RecordStore(root / "records" / "layers", LayerRecord)
        # Serialises what changes the set of layers: a commit and a removal.
        self._lock = asyncio.Lock()
        self._unpacks: dict[str, asyncio.Task[Layer]] = {}
        self._streams: dict[str, BlobReader] = {}  # the running unpacks that follow a download
        # Parents of unpacks in progress: not collectable, or the child would land on nothing.
        self._holds: Counter[str] = Counter()
        self._removing: set[str] = set()
        self._cancel = threading.Event()
        # Set (and replaced) each time a layer is committed: wakes children waiting for a parent.
        self._committed = asyncio.Event()
        self.parent_wait_s = PARENT_WAIT_S
        # Unpacks get threads of their own: long ones must not starve the default pool,
        # which serves the quick file operations (record writes, mounts) of every call.
        self._unpack_pool = ThreadPoolExecutor(UNPACK_WORKERS, thread_name_prefix="unpack")

    # -- state ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the records and make the disk agree with them; call once, before serving."""
        await asyncio.to_thread(self._make_dirs)
        records = await asyncio.to_thread(self._records.load)
        present = await asyncio.to_thread(self._final_dirs)
        valid = {r.chain_id for key, r in records.items() if key in present and _key(r.chain_id) == key}
        while True:
            orphans = {c for c in valid if records[_key(c)].parent_chain_id not in ("", *valid)}
            if not orphans:
                break
            valid -= orphans
        for key, record in records.items():
            if record.chain_id not in valid:
                log.warning("layer %s dropped at start: its directory or its parent is missing", record.chain_id)
                await self._records.delete(key)
        await asyncio.to_thread(self._sweep, {_key(c) for c in valid})
        log.info("layer store loaded: %d layers", len(self._records))

    def _make_dirs(self) -> None:
        for path in (self.layers_dir, self.incoming_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _final_dirs(self) -> set[str]:
        return {e.name for e in os.scandir(self.layers_dir)
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")}

    def _sweep(self, keep: set[str]) -> None:
        for entry in os.scandir(self.layers_dir):
            if entry.name in keep:
                continue
            if not entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                log.warning("removing %s: no record", entry.path)
            if entry.is_dir(follow_symlinks=False):
                remove_tree(Path(entry.path))
            else:
                os.unlink(entry.path)

    def __len__(self) -> int:
        return len(self._records)

    def get(self, chain_id: str) -> LayerRecord | None:
        if chain_id in self._removing:
            return None
        record = self._records.get(_key(chain_id))
        return record if record is not None and record.chain_id == chain_id else None

    def diff_dir(self, chain_id: str) -> Path:
        return self.layers_dir / _key(chain_id) / "diff"

    def chain(self, chain_id: str) -> list[LayerRecord]:
        """The layers of `chain_id`, top first; NotFound unless all are stored."""
        out: list[LayerRecord] = []
        current = chain_id
        while current:
            record = self.get(current)
            if record is None:
                raise NotFound(f"layer {current} is not stored" + (f" (below {chain_id})" if out else ""))
            out.append(record)
            current = record.parent_chain_id
        return out

    # -- apply ---------------------------------------------------------------------------------

    async def apply(self, req: ApplyLayerRequest) -> Layer:
        """Store the layer in `incoming/<req.blob>` (idempotent); the blob is removed in any case.

        A streamed apply (`req.growing`, see blob_reader.py) leaves the blob to imaged unless it
        stores the layer: imaged applies it again, complete, after a streamed failure.
        """
        blob_path = self._blob_path(req.blob)
        stored = False
        try:
            layer = await self._store(req, blob_path)
            stored = True
            return layer
        finally:
            if stored or not req.growing:
                blob_path.unlink(missing_ok=True)

    async def _store(self, req: ApplyLayerRequest, blob_path: Path) -> Layer:
        self._check_ids(req)
        while (record := self.get(req.chain_id)) is None:
            running = self._unpacks.get(req.chain_id)
            stream = self._streams.get(req.chain_id)
            if stream is not None:
                # imaged never applies one chain twice at once: the caller of that streamed
                # unpack is gone (an imaged restart), and its download will never be linked
                # under the name it waits for. Ours must not wait out its stall.
                stream.abandon()
            if running is None or running.done():
                reader = self._open_blob(req, blob_path)
                try:
                    return await asyncio.shield(self._start_unpack(req, reader))
                except asyncio.CancelledError:
                    # The caller gave up (imaged's download failed, its pull was cancelled): a
                    # streamed unpack would otherwise wait for bytes that never come.
                    reader.abandon()
                    raise
            # Someone is unpacking this chain: share that result. If it fails, ours
            # (a different copy of the blob) gets its own chance.
            with contextlib.suppress(CriplexError):
                return await asyncio.shield(running)
        return record.layer()

    def _blob_path(self, name: str) -> Path:
        if name in ("", ".") or "/" in name or ".." in name or "\0" in name:
            raise InvalidArgument(f"blob name {name!r:.100} is not a plain file name in incoming/")
        return self.incoming_dir / name

    def _check_ids(self, req: ApplyLayerRequest) -> None:
        check_digest(req.diff_id, "diff_id")
        check_digest(req.chain_id, "chain_id")
        if req.parent_chain_id:
            check_digest(req.parent_chain_id, "parent_chain_id")
        expected = chain_id_of(req.parent_chain_id, req.diff_id)
        if req.chain_id != expected:
            raise InvalidArgument(f"chain_id {req.chain_id} does not follow from its parent and diff_id "
                                  f"(expected {expected})")

    def _start_unpack(self, req: ApplyLayerRequest, blob: BlobReader) -> asyncio.Task[Layer]:
        # A layer's diff does not depend on its parent's content, so a child unpacks at
        # once, in parallel with its parent; only its commit waits for the parent
        # (`_await_parent`), so a stored chain ID still always implies its whole chain.
        # No await from here to the hold: a collection cannot slip in between.
        parent = req.parent_chain_id
        task = asyncio.create_task(self._unpack(req, blob), name=f"unpack {req.chain_id}")
        self._unpacks[req.chain_id] = task
        if blob.streaming:
            self._streams[req.chain_id] = blob
        if parent:
            self._holds[parent] += 1
        task.add_done_callback(lambda t: self._unpack_done(t, req))
        return task

    def _unpack_done(self, task: asyncio.Task[Layer], req: ApplyLayerRequest) -> None:
        if self._unpacks.get(req.chain_id) is task:
            del self._unpacks[req.chain_id]
            self._streams.pop(req.chain_id, None)
        if req.parent_chain_id:
            self._holds[req.parent_chain_id] -= 1
            if self._holds[req.parent_chain_id] <= 0:
                del self._holds[req.parent_chain_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("layer %s refused: %s", req.chain_id, exc)

    def _open_blob(self, req: ApplyLayerRequest, path: Path) -> BlobReader:
        """The complete blob at `path`, or, while imaged has not finished it, the growing one."""
        if req.growing and not path.exists():
            growing = self._blob_path(req.growing)
            # imaged renames the partial file once it verified, just before linking it as `path`.
            with contextlib.suppress(FileNotFoundError):
                return self._open(growing, Follow(self.incoming_dir, req.size, req.blob))
        try:
            return self._open(path, None)
        except FileNotFoundError:
            raise NotFound(f"blob {path.name} is not in {path.parent}") from None

    def _open(self, path: Path, follow: Follow | None) -> BlobReader:
        try:
            return BlobReader.open(path, follow, self._cancel)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise InvalidArgument(f"blob {path.name}: {exc.strerror or 'not a regular file'}") from None

    async def _unpack(self, req: ApplyLayerRequest, blob: BlobReader) -> Layer:
        tmp = self.layers_dir / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            with blob:
                await asyncio.to_thread(os.mkdir, tmp, 0o700)
                usage = await asyncio.get_running_loop().run_in_executor(
                    self._unpack_pool, unpack_blob, blob, req.media_type, req.diff_id, tmp / "diff", self._cancel,
                    self._pause)
            record = LayerRecord(req.chain_id, req.parent_chain_id, req.diff_id, usage.bytes, usage.inodes,
                                 time.time())
            if req.parent_chain_id:
                await self._await_parent(req)
            async with self._lock:
                if req.parent_chain_id and self.get(req.parent_chain_id) is None:
                    raise FailedPrecondition(f"parent layer {req.parent_chain_id} went away during the unpack")
                await asyncio.to_thread(self._publish, tmp, self.layers_dir / _key(req.chain_id))
                await self._records.put(_key(req.chain_id), record)
                self._committed.set()
                self._committed = asyncio.Event()
        except asyncio.CancelledError:
            raise  # the tmp dir is debris the next start removes
        except Exception as exc:
            await asyncio.to_thread(remove_tree, tmp)
            if isinstance(exc, OSError):
                raise _host_error(exc, f"unpacking layer {req.chain_id}") from exc
            raise
        log.info("layer %s stored: %d bytes, %d inodes", req.chain_id, usage.bytes, usage.inodes)
        return record.layer()

    async def _await_parent(self, req: ApplyLayerRequest) -> None:
        """Wait until the parent is stored; its apply may be running or not even have arrived yet."""
        parent = req.parent_chain_id
        deadline = time.monotonic() + self.parent_wait_s
        while self.get(parent) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FailedPrecondition(f"parent layer {parent} of {req.chain_id} is not stored")
            running = self._unpacks.get(parent)
            if running is not None and not running.done():
                with contextlib.suppress(CriplexError):
                    await asyncio.wait_for(asyncio.shield(running), remaining)
                if self.get(parent) is None and not self._parent_pending(parent):
                    raise FailedPrecondition(f"parent layer {parent} of {req.chain_id} failed to apply")
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), min(remaining, 0.05))

    def _parent_pending(self, chain_id: str) -> bool:
        running = self._unpacks.get(chain_id)
        return running is not None and not running.done()

    def _publish(self, tmp: Path, final: Path) -> None:
        if final.exists():
            remove_tree(final)  # only debris can be there: load removed dirs without records
        os.rename(tmp, final)
        fsync_dir(self.layers_dir)

    # -- removal -------------------------------------------------------------------------------

    async def collect(self, pinned: AbstractSet[str], start: Iterable[str] | None = None) -> int:
        """Remove the layers nothing needs (see `unreferenced`); their files go with `purge_trash`."""
        async with self._lock:
            parents = {r.chain_id: r.parent_chain_id for r in self._records.values()}
            doomed = unreferenced(parents, pinned | self._holds.keys(), start)
            self._removing.update(doomed)
            try:
                for chain_id in doomed:
                    await self._records.delete(_key(chain_id))
                    trash = self.layers_dir / f"{TRASH_PREFIX}{secrets.token_hex(8)}"
                    await asyncio.to_thread(os.rename, self.layers_dir / _key(chain_id), trash)
                    log.info("layer %s removed", chain_id)
            finally:
                self._removing.difference_update(doomed)
        return len(doomed)

    async def purge_trash(self) -> None:
        await asyncio.to_thread(self._purge_trash)

    def _purge_trash(self) -> None:
        for entry in os.scandir(self.layers_dir):
            if entry.name.startswith(TRASH_PREFIX):
                remove_tree(Path(entry.path))

    async def close(self) -> None:
        """Stop unpacks at their next entry and wait for them to clean up."""
        self._cancel.set()
        await asyncio.gather(*self._unpacks.values(), return_exceptions=True)
        self._unpack_pool.shutdown(wait=False)
