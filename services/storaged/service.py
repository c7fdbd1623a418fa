"""storaged's service: the handlers of shared.schema.storaged, and who holds which layer.

A layer is needed while an image holds its chain, a container's rootfs holds it,
or a child layer sits on it. Every change to those holds, and the collection of
what they free, runs under one lock (`_hold_lock`), so a collection never sees a
hold half made. Unpacking runs outside it, in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from services.storaged.compression import check_digest
from services.storaged.image_refs import ImageRefs
from services.storaged.layer_store import LayerStore
from services.storaged.rootfs import RootfsStore
from services.storaged.usage import UsageMonitor
from shared.daemon import DaemonContext, Readiness, when_ready
from shared.errors import InvalidArgument
from shared.pod_starts import PodStartSignal
from shared.schema.storaged import (
    APPLY_LAYER,
    CREATE_ROOTFS,
    FS_USAGE,
    HAS_LAYERS,
    LIST_ROOTFS,
    REMOVE_ROOTFS,
    ROOTFS_USAGE,
    SET_IMAGE_LAYERS,
    SYNC_IMAGES,
    ApplyLayerRequest,
    CreateRootfsRequest,
    FsUsage,
    FsUsageRequest,
    HasLayersRequest,
    HasLayersResponse,
    ImageLayersRequest,
    ImageLayersResponse,
    Layer,
    ListRootfsRequest,
    ListRootfsResponse,
    RemoveRootfsRequest,
    RemoveRootfsResponse,
    Rootfs,
    RootfsUsageRequest,
    RootfsUsageResponse,
    SyncImagesRequest,
    SyncImagesResponse,
)
from shared.transport import DaemonServer

log = logging.getLogger(__name__)



class StoragedService:
    def __init__(self, ctx: DaemonContext) -> None:
        self.root = ctx.state_dir
        self.layers = LayerStore(self.root, PodStartSignal(ctx.config.paths.run_dir,
                                                           ctx.config.gateway.pulls_yield_ms))
        self.images = ImageRefs(self.root / "records" / "images.json")
        self.rootfs = RootfsStore(self.root)
        self._tracing = ctx.tracing
        self.usage = UsageMonitor(self.layers.layers_dir, self.rootfs.containers_dir)
        self._hold_lock = asyncio.Lock()
        self._loaded = asyncio.Event()

    def register(self, server: DaemonServer) -> None:
        server.register(APPLY_LAYER, when_ready(self._loaded, self.apply_layer))
        server.register(HAS_LAYERS, when_ready(self._loaded, self.has_layers))
        server.register(SET_IMAGE_LAYERS, when_ready(self._loaded, self.set_image_layers))
        server.register(SYNC_IMAGES, when_ready(self._loaded, self.sync_images))
        server.register(CREATE_ROOTFS, when_ready(self._loaded, self.create_rootfs))
        server.register(REMOVE_ROOTFS, when_ready(self._loaded, self.remove_rootfs))
        server.register(LIST_ROOTFS, when_ready(self._loaded, self.list_rootfs))
        server.register(ROOTFS_USAGE, when_ready(self._loaded, self.rootfs_usage))
        server.register(FS_USAGE, when_ready(self._loaded, self.fs_usage))


    async def run(self) -> None:
        try:
            await self.load()
            await self.usage.run()
        finally:
            await self.layers.close()

    async def load(self) -> None:
        await self.layers.load()
        await asyncio.to_thread(self.images.load)
        await self.rootfs.load(self._lowers)
        self._loaded.set()

    def readiness(self) -> Readiness:
        if not self._loaded.is_set():
            return Readiness(False, "StorageLoading", f"loading the layer store in {self.root}")
        return Readiness(True, info={"layers": str(len(self.layers)), "rootfs": str(len(self.rootfs))})

    # -- layers --------------------------------------------------------------------------------

    async def apply_layer(self, req: ApplyLayerRequest) -> Layer:
        layer = await self.layers.apply(req)
        self.usage.invalidate()
        return layer

    async def has_layers(self, req: HasLayersRequest) -> HasLayersResponse:
        # A stored layer implies its parents: apply needs them, collection goes top down.
        return HasLayersResponse(tuple(self.layers.get(c) is not None for c in req.chain_ids))

    # -- image holds ---------------------------------------------------------------------------

    async def set_image_layers(self, req: ImageLayersRequest) -> ImageLayersResponse:
        if not req.image_id:
            raise InvalidArgument("set_image_layers needs an image_id")
        async with self._hold_lock:
            images = self.images.images
            old = images.pop(req.image_id, "")
            if req.chain_id:
                check_digest(req.chain_id, "chain_id")
                self.layers.chain(req.chain_id)  # NotFound: imaged must pull again
                images[req.image_id] = req.chain_id
            await self.images.replace(images)
            removed = await self._collect([old]) if old and old != req.chain_id else 0
        await self._purge(removed)
        return ImageLayersResponse(removed)

    async def sync_images(self, req: SyncImagesRequest) -> SyncImagesResponse:
        async with self._hold_lock:
            for image_id, chain_id in req.images.items():
                if not image_id:
                    raise InvalidArgument("sync_images: an image with an empty id")
                check_digest(chain_id, f"chain_id of image {image_id}")
                if self.layers.get(chain_id) is None:
                    log.warning("image %s holds layer %s, which is not stored", image_id, chain_id)
            dropped = tuple(sorted(set(self.images.images) - set(req.images)))
            await self.images.replace(dict(req.images))
            removed = await self._collect(None)
        await self._purge(removed)
        if dropped:
            log.info("sync_images dropped %d image holds: %s", len(dropped), ", ".join(dropped))
        return SyncImagesResponse(dropped, removed)

    # -- container root filesystems ------------------------------------------------------------

    async def create_rootfs(self, req: CreateRootfsRequest) -> Rootfs:
        async with self._hold_lock:
            with self._tracing.span("overlay mount"):
                return await self.rootfs.create(req.container_id, req.chain_id, self._lowers(req.chain_id))

    async def remove_rootfs(self, req: RemoveRootfsRequest) -> RemoveRootfsResponse:
        async with self._hold_lock:
            chain_id = await self.rootfs.remove(req.container_id)
            removed = await self._collect([chain_id]) if chain_id else 0
        await self.rootfs.purge_trash()
        await self._purge(removed)
        return RemoveRootfsResponse()

    async def list_rootfs(self, _req: ListRootfsRequest) -> ListRootfsResponse:
        return ListRootfsResponse(tuple(self.rootfs.container_ids()))

    async def rootfs_usage(self, req: RootfsUsageRequest) -> RootfsUsageResponse:
        """A container's writable layer, for the kubelet's stats (and its ephemeral-storage eviction)."""
        return RootfsUsageResponse(tuple(await asyncio.to_thread(self.rootfs.usage, req.container_ids)))

    # -- usage ---------------------------------------------------------------------------------

    async def fs_usage(self, _req: FsUsageRequest) -> FsUsage:
        return await self.usage.current()

    # -- helpers -------------------------------------------------------------------------------

    def _lowers(self, chain_id: str) -> list[Path]:
        return [self.layers.diff_dir(r.chain_id) for r in self.layers.chain(chain_id)]

    async def _collect(self, start: Iterable[str] | None) -> int:
        return await self.layers.collect(self.images.chains() | self.rootfs.chains(), start)

    async def _purge(self, removed: int) -> None:
        if removed:
            await self.layers.purge_trash()
            self.usage.invalidate()
