"""imaged's service: the four image methods, and keeping storaged's image references in step.

Handlers are thin; the story of a pull is in `pull.py`. Lookups and listings are
answered from memory. At start, and each time storaged (re)connects, imaged
sends storaged its complete set of images (sync_images) so references of images
removed while either side was down, or whose release failed, are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from services.imaged.auth import TokenCache
from services.imaged.connections import ConnectionPool
from services.imaged.host_config import HostConfig
from services.imaged.image_store import ImageStore, is_image_id
from services.imaged.inflight import SyncGate
from services.imaged.layers import LayerFetcher
from services.imaged.pull import Puller
from services.imaged.reference import ImageReference, parse_reference
from services.imaged.registries_conf import RegistriesConf, candidates
from services.imaged.resolve import Resolver
from shared.config import Config
from shared.daemon import DaemonContext, Readiness
from shared.errors import CriplexError, DeadlineExceeded, InvalidArgument, Unavailable
from shared.pod_starts import PodStartSignal
from shared.schema.common import MetricsReport
from shared.schema.imaged import (
    IMAGE_STATUS,
    LIST_IMAGES,
    PULL_IMAGE,
    PULL_PROGRESS_TOPIC,
    REMOVE_IMAGE,
    ImageRecord,
    ImageStatusRequest,
    ImageStatusResponse,
    ListImagesRequest,
    ListImagesResponse,
    PullImageRequest,
    PullImageResponse,
    PullProgress,
    RemoveImageRequest,
    RemoveImageResponse,
)
from shared.schema.storaged import SET_IMAGE_LAYERS, SYNC_IMAGES, ImageLayersRequest, SyncImagesRequest
from shared.transport import DaemonClient, DaemonServer

log = logging.getLogger(__name__)

_SYNC_RETRY_MIN_S = 0.2
_SYNC_RETRY_MAX_S = 5.0
_SYNC_TIMEOUT_S = 30.0


class ImagedService:
    def __init__(self, ctx: DaemonContext) -> None:
        config = ctx.config.imaged
        self._ctx = ctx
        # httpx logs every request at INFO and httpcore every socket step at DEBUG: a pull of a
        # large image would bury imaged's own lines. Their warnings still come through. Set here,
        # at the daemon's start, not at import: importing imaged's code must not change logging.
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self._store = ImageStore(ctx.state_dir / "images")
        self._store.load()
        self._host = HostConfig(config)
        self._storaged = DaemonClient("storaged", ctx.config, ctx.tracing)
        self._pool = ConnectionPool(Path(config.certs_dir))
        _ = self._pool.system_context  # loaded now, before serving, not at the first pull
        self._gate = SyncGate()
        self._layers = LayerFetcher(ctx.config.state_dir("storaged") / "incoming", self._storaged,
                                    call_timeout=config.pull_timeout,
                                    pod_starts=PodStartSignal(ctx.config.paths.run_dir,
                                                              ctx.config.gateway.pulls_yield_ms))
        resolver = Resolver(config, self._host, self._pool, TokenCache())
        self._puller = Puller(config, resolver, self._layers, self._storaged, self._store, self._gate,
                              self._publish_progress)
        # Registered before the loop runs, so the first connection cannot be missed: it (and
        # every reconnection of a restarted storaged) triggers a sync.
        self._need_sync = asyncio.Event()
        self._storaged.on_connect(self._need_sync.set)
        self._synced = False
        self._layers.prepare(max_age_s=config.pull_timeout)
        log.info("imaged: %d images on record", len(self._store.all()))

    def register(self, server: DaemonServer) -> None:
        server.register(PULL_IMAGE, self.pull_image)
        server.register(IMAGE_STATUS, self.image_status)
        server.register(LIST_IMAGES, self.list_images)
        server.register(REMOVE_IMAGE, self.remove_image)

    async def run(self) -> None:
        try:
            while True:
                await self._need_sync.wait()
                self._need_sync.clear()
                await self._sync_storaged()
        finally:
            self._layers.cancel_all()
            self._storaged.close()
            await self._pool.aclose()

    def on_reload(self, config: Config) -> None:
        """registries.conf, policy.json and auth.json are re-read at once (even unchanged: an
        admin's reload is a request to re-read), and the new pause image is the pinned one."""
        self._host.reload(config.imaged)
        self._puller.set_pause_image(config.imaged.pause_image)

    def readiness(self) -> Readiness:
        info = {"images": str(len(self._store.all()))}
        if not self._synced:
            return Readiness(False, "StoragedNotSynced", "imaged has not yet synchronised storaged's "
                             "image references", info)
        return Readiness(True, info=info)

    def metrics(self) -> MetricsReport:
        return self._puller.stats.report()

    # -- handlers ---------------------------------------------------------------------------------

    async def pull_image(self, request: PullImageRequest) -> PullImageResponse:
        record = await self._puller.pull(request.image, request.auth)
        return PullImageResponse(record.id)

    async def image_status(self, request: ImageStatusRequest) -> ImageStatusResponse:
        record = self._find(request.image)
        if record is None:
            return ImageStatusResponse(None)
        return ImageStatusResponse(record, verbose_info(record) if request.verbose else {})

    async def list_images(self, request: ListImagesRequest) -> ListImagesResponse:
        if not request.image:
            generation = self._store.generation
            if request.known_generation == generation:
                return ListImagesResponse((), generation, unchanged=True)
            return ListImagesResponse(tuple(sorted(self._store.all(), key=lambda r: r.id)), generation)
        record = self._find(request.image)
        return ListImagesResponse((record,) if record is not None else ())

    async def remove_image(self, request: RemoveImageRequest) -> RemoveImageResponse:
        async with self._gate.shared():
            record = self._find(request.image)
            if record is None:
                return RemoveImageResponse()  # already gone: RemoveImage is idempotent
            # A pull of this image sets storaged's reference and then writes the record under the
            # same lock: the release below can never fall between the two.
            async with self._store.image_lock(record.id):
                if self._store.get(record.id) is None:
                    return RemoveImageResponse()  # removed by a concurrent call meanwhile
                await self._store.delete(record.id)
                log.info("removed image %s (%s)", record.id, ", ".join(record.repo_tags) or "untagged")
                try:
                    await self._storaged.call(SET_IMAGE_LAYERS, ImageLayersRequest(record.id, ""))
                except CriplexError as exc:
                    # The record is gone, so the next sync_images (storaged reconnect or our restart)
                    # drops the reference; failing here would only make the kubelet retry a no-op.
                    log.warning("releasing layers of %s in storaged failed (%s); the next sync drops them",
                                record.id, exc.message)
        return RemoveImageResponse()

    # -- internals --------------------------------------------------------------------------------

    def _find(self, query: str) -> ImageRecord | None:
        """The stored image `query` names (a reference, an ID or a unique ID prefix), or None.

        A query that is neither a reference nor an ID is refused, as containerd refuses it:
        "not stored" would hide a malformed request.
        """
        try:
            ref: ImageReference | None = parse_reference(query)
        except InvalidArgument:
            if not is_image_id(query):
                raise
            ref = None
        return self._store.find(query, self._names(ref) if ref is not None else [])

    def _names(self, ref: ImageReference) -> list[ImageReference]:
        try:
            conf = self._host.registries()
        except CriplexError:
            conf = RegistriesConf()  # a broken registries.conf must not hide images already stored
        return candidates(conf, ref)

    def _publish_progress(self, progress: PullProgress) -> None:
        self._ctx.events.publish(PULL_PROGRESS_TOPIC, progress)

    async def _sync_storaged(self) -> None:
        delay = _SYNC_RETRY_MIN_S
        while True:
            try:
                async with self._gate.exclusive():
                    images = {r.id: r.chain_ids[-1] for r in self._store.all() if r.chain_ids}
                    answer = await self._storaged.call(SYNC_IMAGES, SyncImagesRequest(images),
                                                       timeout=_SYNC_TIMEOUT_S)
                self._synced = True
                log.info("storaged synchronised: %d images; dropped %d stale references, %d layers removed",
                         len(images), len(answer.dropped), answer.removed_layers)
                return
            except (Unavailable, DeadlineExceeded) as exc:
                log.debug("sync_images: storaged not answering yet: %s", exc.message)
            except CriplexError as exc:
                log.error("sync_images failed: %s", exc.message)
            await asyncio.sleep(delay)
            delay = min(_SYNC_RETRY_MAX_S, delay * 2)


def verbose_info(record: ImageRecord) -> dict[str, str]:
    """ImageStatus verbose info: one JSON document under "info", as CRI-O answers."""
    layers = [{"diffID": d, "chainID": c} for d, c in zip(record.diff_ids, record.chain_ids, strict=False)]
    doc = {
        "id": record.id,
        "repoTags": list(record.repo_tags),
        "repoDigests": list(record.repo_digests),
        "manifestDigest": record.manifest_digest,
        "manifestMediaType": record.manifest_media_type,
        "configDigest": record.config_digest,
        "chainIDs": list(record.chain_ids),
        "layers": layers,
        "platform": record.platform,
        "created": record.created,
        "pinned": record.pinned,
        "config": {
            "User": record.user,
            "Env": list(record.env),
            "Entrypoint": list(record.entrypoint),
            "Cmd": list(record.cmd),
            "WorkingDir": record.working_dir,
            "Labels": record.labels,
            "StopSignal": record.stop_signal,
            "Volumes": list(record.volumes),
        },
    }
    return {"info": json.dumps(doc)}
