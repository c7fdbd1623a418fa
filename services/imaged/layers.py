"""Getting one layer into storaged: download its blob, verified, then ask storaged to apply it.

Shared work, so concurrent pulls never fetch or apply twice:
- per chain ID, "download + apply" (two pulls of one image);
- per blob digest, the download (one blob at two chain positions). Every user of
  a download gets its own hard link in storaged's incoming directory, because
  storaged consumes (deletes) the file it applies; the download's own file is
  deleted once the last user has linked it.
- across restarts: a download's partial file has one name per blob and survives an
  interruption, so the next pull of the blob (by this imaged or the next) hashes the
  bytes it holds again and asks the registry only for the rest (Range).

Downloads run in parallel, and each layer is handed to storaged with the
download's first bytes: storaged unpacks it as it arrives (storaged's
blob_reader.py) and commits it only once the blob verified here and its parent is
stored (so a stored chain ID always implies its whole chain, which has_layers
relies on). A pull then costs about the longer of download and unpack, not their sum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from services.imaged.distribution import RegistryClient
from services.imaged.inflight import Fanout, Listener, SharedTasks
from services.imaged.manifest import Descriptor
from shared.errors import AlreadyExists, CriplexError, DeadlineExceeded, Unavailable
from shared.pod_starts import PodStartSignal
from shared.schema.storaged import APPLY_LAYER, ApplyLayerRequest
from shared.wire import Method

log = logging.getLogger(__name__)

PREFIX = "imaged-"
_PARTIAL = ".partial"


class Storaged(Protocol):
    """What imaged needs of storaged's client (shared.transport.DaemonClient)."""

    async def call(self, method: Method[Any, Any], args: Any, timeout: float | None = None) -> Any: ...


class LayerFetcher:
    def __init__(self, incoming: Path, storaged: Storaged, call_timeout: float,
                 pod_starts: PodStartSignal | None = None) -> None:
        self._incoming = incoming
        self._storaged = storaged
        self._call_timeout = call_timeout
        self._pause = pod_starts.pause_async if pod_starts is not None else None
        self._layers: SharedTasks[str, None] = SharedTasks()
        self._blobs: SharedTasks[str, Path] = SharedTasks(release=_unlink)

    def prepare(self, max_age_s: float) -> None:
        """Create the incoming directory and remove what an earlier imaged left half-done."""
        self._incoming.mkdir(parents=True, exist_ok=True, mode=0o700)
        cutoff = time.time() - max_age_s
        for entry in self._incoming.iterdir():
            if not entry.name.startswith(PREFIX):
                continue
            try:
                # A finished blob may be in storaged's hands right now; only old ones are ours to drop.
                # A young partial download is kept: the next pull of its blob resumes after its bytes.
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except FileNotFoundError:
                pass

    async def ensure(self, client: RegistryClient, layer: Descriptor, chain_id: str, parent_chain_id: str,
                     diff_id: str, downloads: asyncio.Semaphore, listener: Listener) -> None:
        """Return once storaged holds `chain_id`; `listener` hears the bytes downloaded."""
        async def start(fanout: Fanout) -> None:
            await self._fetch_and_apply(client, layer, chain_id, parent_chain_id, diff_id, downloads, fanout)

        await self._layers.run(chain_id, start, take=lambda _: None, listener=listener)

    def cancel_all(self) -> None:
        self._layers.cancel_all()
        self._blobs.cancel_all()

    async def _fetch_and_apply(self, client: RegistryClient, layer: Descriptor, chain_id: str,
                               parent_chain_id: str, diff_id: str, downloads: asyncio.Semaphore,
                               fanout: Fanout) -> None:
        # The name storaged gets the blob under: linked only once the download verified.
        own = self._incoming / self._name(layer.digest)
        started = asyncio.Event()

        def on_bytes(delta: int) -> None:
            fanout(delta)
            started.set()

        async def start(blob_fanout: Fanout) -> Path:
            return await self.download_blob(client, layer, downloads, blob_fanout)

        download = asyncio.create_task(
            self._blobs.run(layer.digest, start, take=lambda blob: self._link(blob, own), listener=on_bytes))
        request = ApplyLayerRequest(chain_id, parent_chain_id, diff_id, own.name, layer.media_type)
        try:
            if not await self._apply_while_downloading(request, layer, download, started):
                await download
                await self._apply(request)
        finally:
            if not download.done():
                download.cancel()
                with contextlib.suppress(BaseException):
                    await download
            # storaged deletes the blob once applied or refused; this covers calls that never reached it.
            _unlink(own)

    async def _apply_while_downloading(self, request: ApplyLayerRequest, layer: Descriptor,
                                       download: asyncio.Task[Path], started: asyncio.Event) -> bool:
        """Have storaged unpack the blob as it arrives; False when the layer still needs applying.

        The streamed apply starts with the download's first bytes (the partial file exists
        then). Its failure never decides the layer: the download may have started over
        meanwhile, and storaged could only judge bytes nobody vouched for. So once the
        download verified, the complete blob is applied the classic way, unless storaged
        had already consumed it (it deletes the blob once the layer verified).
        """
        first_bytes = asyncio.create_task(started.wait())
        try:
            await asyncio.wait({download, first_bytes}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first_bytes.cancel()
        if download.done():
            return False  # done (or failed) before a byte was seen: nothing to overlap
        growing = replace(request, growing=self._partial_name(layer.digest), size=layer.size)
        apply = asyncio.create_task(self._apply(growing))
        try:
            await download
        except BaseException:
            apply.cancel()
            with contextlib.suppress(BaseException):
                await apply
            raise
        try:
            await apply
        except CriplexError as exc:
            if not (self._incoming / request.blob).exists():
                raise  # storaged unpacked and consumed the verified blob: its answer stands
            log.info("layer %s: unpacking while downloading failed (%s); applying the verified blob",
                     request.chain_id, exc.message)
            return False
        return True

    async def _apply(self, request: ApplyLayerRequest) -> None:
        # Applied at once, even before the parent: storaged unpacks layers in parallel and
        # commits each only after its parent. If the parent's work fails, storaged refuses
        # ours with FailedPrecondition, and the pull reports the parent's own error first.
        # AlreadyExists: another client of storaged stored it meanwhile, which is what we wanted.
        with contextlib.suppress(AlreadyExists):
            await self._storaged.call(APPLY_LAYER, request, timeout=self._call_timeout)

    async def download_blob(self, client: RegistryClient, layer: Descriptor, downloads: asyncio.Semaphore,
                            on_bytes: Listener) -> Path:
        """Download `layer`'s blob, verified, into a file of its own in the incoming directory."""
        async with downloads:
            partial = self._incoming / self._partial_name(layer.digest)
            started = time.monotonic()
            try:
                await client.download(layer, partial, on_bytes, self._pause)
                final = self._incoming / self._name(layer.digest)
                os.rename(partial, final)
            except (asyncio.CancelledError, Unavailable, DeadlineExceeded):
                # Interrupted (imaged stopping, the pull cancelled, the registry unreachable): the
                # bytes stay for the next pull of this blob, even by a restarted imaged, to resume.
                raise
            except BaseException:
                _unlink(partial)
                raise
            elapsed = time.monotonic() - started
            log.info("downloaded %s from %s (%d bytes, %.1fs)", layer.digest, client.host, layer.size, elapsed)
            return final

    @staticmethod
    def _link(blob: Path, own: Path) -> None:
        os.link(blob, own)

    @staticmethod
    def _partial_name(digest: str) -> str:
        """One name per blob, so that a download is found again after a restart (the blob
        tasks make sure one imaged never runs two downloads of a blob at once)."""
        algorithm, _, hexdigest = digest.partition(":")
        return f"{PREFIX}{hexdigest[:12]}-{algorithm}-{hexdigest}{_PARTIAL}"

    @staticmethod
    def _name(digest: str) -> str:
        short = digest.split(":")[-1][:12]
        return f"{PREFIX}{short}-{uuid.uuid4().hex}"


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
