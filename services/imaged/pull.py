"""PullImage: resolve, fetch what storaged lacks, reference the layers, record the image.

The order is what keeps a crash at any point harmless:
1. layers are applied in storaged (keyed by chain ID, shared with other images),
   while a reference of the pull's own holds the layers that were already stored;
2. storaged holds the image's reference on its top chain (set_image_layers);
3. only then the record is written.
A crash between 2 and 3 leaves a reference without a record, which the
sync_images at the next start drops. The whole of 1-3 runs inside the SyncGate,
so that resync never sees layers of a pull in progress as unreferenced. Steps 2
and 3 run under the image's lock, which a removal of the image takes too.

Layers found stored can still be collected before the pull holds them (another
image sharing them was removed in between); the pull then looks again and
fetches what went missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any

from services.imaged.image_store import ImageStore
from services.imaged.inflight import SyncGate
from services.imaged.layers import LayerFetcher, Storaged
from services.imaged.manifest import INT64_MAX, chain_ids, user_ids
from services.imaged.pull_stats import PullStats
from services.imaged.reference import normalize
from services.imaged.resolve import ResolvedImage, Resolver
from shared.config import ImagedConfig
from shared.errors import CriplexError, DeadlineExceeded, Internal
from shared.schema.imaged import ImageRecord, PullProgress, RegistryAuth
from shared.schema.storaged import HAS_LAYERS, SET_IMAGE_LAYERS, HasLayersRequest, ImageLayersRequest

log = logging.getLogger(__name__)

_PUBLISH_EVERY_S = 0.5
# Fetching layers again because an image removal collected some of them meanwhile: a few
# times, not forever (a removal loop racing every pull would otherwise keep it busy).
_STORE_ATTEMPTS = 3
# storaged references held by a pull in progress, under keys that are no image ID.
PULL_HOLD_PREFIX = "pull-in-progress-"
_LOG_EVERY_S = 10.0

Publish = Callable[[PullProgress], None]


class Progress:
    """A pull's counters, published at most every 0.5 s and logged every 10 s."""

    def __init__(self, image: str, layers_total: int, bytes_total: int, publish: Publish) -> None:
        self._image = image
        self._publish = publish
        self.layers_total = layers_total
        self.bytes_total = bytes_total
        self.layers_done = 0
        self.bytes_done = 0
        self._published = 0.0
        self._logged = time.monotonic()

    def add_bytes(self, delta: int) -> None:
        self.bytes_done += delta
        self._maybe_report()

    def layer_done(self) -> None:
        self.layers_done += 1
        self._maybe_report()

    def _maybe_report(self, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._published >= _PUBLISH_EVERY_S:
            self._published = now
            try:
                self._publish(PullProgress(self._image, self.bytes_done, self.bytes_total,
                                           self.layers_done, self.layers_total))
            except Exception as exc:  # progress is advisory; it must never fail a pull
                log.debug("pull progress not published: %s", exc)
        if now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            log.info("pull %s: %d/%d layers, %d/%d bytes", self._image, self.layers_done,
                     self.layers_total, self.bytes_done, self.bytes_total)

    def finish(self) -> None:
        self._maybe_report(final=True)


class Puller:
    def __init__(self, config: ImagedConfig, resolver: Resolver, layers: LayerFetcher, storaged: Storaged,
                 store: ImageStore, gate: SyncGate, publish: Publish) -> None:
        self._config = config
        self._resolver = resolver
        self._layers = layers
        self._storaged = storaged
        self._store = store
        self._gate = gate
        self._publish = publish
        self.pause_names = _pause_names(config.pause_image)
        self.stats = PullStats()

    def set_pause_image(self, pause_image: str) -> None:
        self.pause_names = _pause_names(pause_image)

    async def pull(self, image: str, cri_auth: RegistryAuth | None) -> ImageRecord:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._config.pull_timeout):
                record = await self._pull(image, cri_auth)
        except TimeoutError:
            log.warning("pull %s: imaged.pull_timeout (%gs) reached", image, self._config.pull_timeout)
            exc = DeadlineExceeded(f"pulling {image} took longer than imaged.pull_timeout "
                                   f"({self._config.pull_timeout:g}s)")
            self.stats.failed(exc)
            raise exc from None
        except CriplexError as exc:
            log.warning("pull %s failed: %s: %s", image, type(exc).__name__, exc.message)
            self.stats.failed(exc)
            raise
        except asyncio.CancelledError:
            # The caller's deadline (enforced by the daemon server) or shutdown.
            log.warning("pull %s cancelled after %.1fs", image, time.monotonic() - started)
            raise
        log.info("pulled %s as %s in %.1fs", image, record.id, time.monotonic() - started)
        self.stats.succeeded += 1
        return record

    async def _pull(self, image: str, cri_auth: RegistryAuth | None) -> ImageRecord:
        resolved = await self._resolver.resolve(image, cri_auth)
        chain = chain_ids(resolved.config.diff_ids)
        record = compose_record(resolved, chain)  # before storaged holds anything for it
        image_id = record.id
        async with self._gate.shared():
            for attempt in range(1, _STORE_ATTEMPTS + 1):
                present = await self._present(chain)
                try:
                    async with self._holding(chain, present):
                        await self._fetch_missing(image, resolved, chain, present)
                        # The reference and the record change together, never interleaved with a
                        # removal of this image (which drops the record, then the reference).
                        async with self._store.image_lock(image_id):
                            await self._storaged.call(SET_IMAGE_LAYERS, ImageLayersRequest(image_id, chain[-1]),
                                                      timeout=self._config.pull_timeout)
                            return await self._store.add(replace(record, pulled_at=time.time()),
                                                         self.pause_names)
                except CriplexError as exc:
                    # Layers that were stored when we looked may be collected before this pull holds
                    # them: an image sharing them was removed meanwhile (the kubelet's image GC during
                    # a rollout). storaged then refuses our hold; look again and fetch what is missing.
                    if attempt == _STORE_ATTEMPTS or not await self._lost(chain, present):
                        raise
                    log.info("pull %s: stored layers were removed meanwhile (%s); fetching them again",
                             image, exc.message)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def _holding(self, chain: tuple[str, ...], present: tuple[bool, ...]) -> AsyncIterator[None]:
        """Hold the layers already stored while the missing ones download.

        Until the image's own reference is set at the end, nothing else keeps them: removing
        another image that shares them would let storaged collect them under us, and our
        first missing layer would then wait for a parent that never comes. The hold is a
        reference of a key of this pull's own; the next sync_images drops it if imaged dies
        before releasing it (a sync never runs while a pull is in progress).
        """
        if not any(present) or all(present):
            yield  # nothing to protect, or nothing to download: the image's reference comes next
            return
        key = f"{PULL_HOLD_PREFIX}{uuid.uuid4().hex}"
        # A stored chain ID implies its whole chain, so the top stored layer holds them all.
        top = max(i for i, stored in enumerate(present) if stored)
        await self._storaged.call(SET_IMAGE_LAYERS, ImageLayersRequest(key, chain[top]),
                                  timeout=self._config.pull_timeout)
        try:
            yield
        finally:
            try:
                await self._storaged.call(SET_IMAGE_LAYERS, ImageLayersRequest(key, ""),
                                          timeout=self._config.pull_timeout)
            except Exception as exc:  # storaged gone or imaged stopping: the next sync drops it
                log.warning("releasing pull hold %s failed (%s); the next sync drops it", key, exc)

    async def _present(self, chain: tuple[str, ...]) -> tuple[bool, ...]:
        answer = await self._storaged.call(HAS_LAYERS, HasLayersRequest(chain), timeout=self._config.pull_timeout)
        if len(answer.present) != len(chain):
            raise Internal(f"storaged answered has_layers for {len(answer.present)} of {len(chain)} layers")
        return tuple(answer.present)

    async def _lost(self, chain: tuple[str, ...], present: tuple[bool, ...]) -> bool:
        """Whether a layer that was stored at `present` is gone now."""
        try:
            now = await self._present(chain)
        except CriplexError:
            return False
        return any(was and not still for was, still in zip(present, now, strict=True))

    async def _fetch_missing(self, image: str, resolved: ResolvedImage, chain: tuple[str, ...],
                             present: tuple[bool, ...]) -> None:
        layers, config = resolved.manifest.layers, resolved.config
        missing = [i for i, stored in enumerate(present) if not stored]
        progress = Progress(image, len(missing), sum(layers[i].size for i in missing), self._publish)
        progress.finish()
        self.stats.layers_reused += len(chain) - len(missing)

        def add_bytes(delta: int) -> None:
            progress.add_bytes(delta)
            self.stats.add_bytes(delta)
        downloads = asyncio.Semaphore(self._config.max_concurrent_downloads)

        async def fetch(i: int) -> None:
            parent = chain[i - 1] if i else ""
            await self._layers.ensure(resolved.client, layers[i], chain[i], parent, config.diff_ids[i],
                                      downloads, add_bytes)
            progress.layer_done()

        await _all_or_first_error([fetch(i) for i in missing])
        progress.finish()


def compose_record(resolved: ResolvedImage, chain: tuple[str, ...]) -> ImageRecord:
    manifest, config, name = resolved.manifest, resolved.config, resolved.name
    # A reference with both tag and digest was pulled by digest: the tag's current target in the
    # registry was never looked at, so recording it would claim what we do not know.
    tags = (name.tagged_name,) if name.tag and not name.digest else ()
    uid, username = user_ids(config.user)
    return ImageRecord(
        id=manifest.config.digest,
        repo_tags=tags,
        repo_digests=(f"{name.name}@{resolved.top_digest}",),
        # Each size is at most 2^63-1 (manifest.py), but a manifest may list layers that are
        # never downloaded (already stored): keep the sum inside the CRI's and msgpack's range.
        size=min(INT64_MAX, sum(layer.size for layer in manifest.layers) + manifest.config.size),
        manifest_digest=resolved.manifest_digest,
        manifest_media_type=manifest.media_type,
        config_digest=manifest.config.digest,
        chain_ids=chain,
        diff_ids=config.diff_ids,
        uid=uid,
        username=username,
        created=config.created,
        platform=config.platform,
        pulled_at=time.time(),
        env=config.env,
        entrypoint=config.entrypoint,
        cmd=config.cmd,
        working_dir=config.working_dir,
        user=config.user,
        labels=config.labels,
        stop_signal=config.stop_signal,
        volumes=config.volumes,
    )


def _pause_names(pause_image: str) -> tuple[str, ...]:
    try:
        ref = normalize(pause_image)
    except CriplexError:
        log.error("imaged.pause_image %r is not a valid reference; no image is pinned", pause_image)
        return ()
    return tuple(n for n in (ref.tagged_name if not ref.digest else "", ref.digested_name) if n)


async def _all_or_first_error(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run all; on the first failure cancel the rest and raise that failure itself (not a group)."""
    if not coros:
        return
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as eg:
        errors = _flatten(eg)
        first = next((e for e in errors if isinstance(e, CriplexError)), errors[0])
        raise first from None


def _flatten(eg: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in eg.exceptions:
        out.extend(_flatten(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
