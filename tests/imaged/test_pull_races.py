"""A pull racing an image removal: storaged's references and imaged's records stay in step.

storaged collects a layer as soon as nothing references it. A pull counts on the layers
it found stored until it sets its image's own reference at the end, so a removal of
another image sharing them (the kubelet's image GC during a rollout), or of the same
image, must neither fail the pull nor leave a record whose layers storaged may delete.
The storaged here is a model of those rules; the Puller is the real one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.imaged.image_store import ImageStore
from services.imaged.inflight import SyncGate
from services.imaged.manifest import OCI_MANIFEST, Descriptor, ImageConfig, ImageManifest, chain_ids
from services.imaged.pull import PULL_HOLD_PREFIX, Puller
from services.imaged.reference import normalize
from shared.config import ImagedConfig
from shared.errors import FailedPrecondition, NotFound
from shared.locks import KeyedLock
from shared.schema.storaged import (
    HAS_LAYERS,
    SET_IMAGE_LAYERS,
    HasLayersResponse,
    ImageLayersResponse,
)

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
BASE, X_TOP, Y_TOP = ("sha256:" + c * 64 for c in "abc")
X_CHAIN = chain_ids((BASE, X_TOP))
Y_CHAIN = chain_ids((BASE, Y_TOP))


class ModelStoraged:
    """has_layers / set_image_layers with storaged's rules: a reference needs its whole chain,
    a layer stays while an image references it or a stored child has it as parent."""

    def __init__(self) -> None:
        self.layers: dict[str, str] = {}  # chain id -> parent chain id
        self.holds: dict[str, str] = {}  # image id (or a pull's key) -> top chain id
        self.after_has_layers: Callable[[], None] | None = None

    def store(self, chain: tuple[str, ...]) -> None:
        for i, chain_id in enumerate(chain):
            self.layers[chain_id] = chain[i - 1] if i else ""

    def release(self, key: str) -> None:
        self.holds.pop(key, None)
        self.collect()

    def collect(self) -> None:
        while True:
            held = set(self.holds.values()) | set(self.layers.values())
            gone = [c for c in self.layers if c not in held]
            if not gone:
                return
            for chain_id in gone:
                del self.layers[chain_id]

    def apply(self, chain_id: str, parent: str) -> None:
        if parent and parent not in self.layers:
            raise FailedPrecondition(f"parent layer {parent} of {chain_id} is not stored")
        self.layers[chain_id] = parent

    async def call(self, method, req, timeout=None):
        await asyncio.sleep(0)
        if method is HAS_LAYERS:
            answer = HasLayersResponse(tuple(c in self.layers for c in req.chain_ids))
            hook, self.after_has_layers = self.after_has_layers, None
            if hook is not None:
                hook()
            return answer
        assert method is SET_IMAGE_LAYERS
        if req.chain_id:
            current = req.chain_id
            while current:
                if current not in self.layers:
                    raise NotFound(f"layer {current} is not stored")
                current = self.layers[current]
            self.holds[req.image_id] = req.chain_id
            self.collect()
        else:
            self.release(req.image_id)
        return ImageLayersResponse()


class ModelLayers:
    """LayerFetcher: 'downloads' a layer and applies it in the model storaged."""

    def __init__(self, storaged: ModelStoraged) -> None:
        self.storaged = storaged
        self.downloaded: list[str] = []
        self.while_downloading: Callable[[], None] | None = None

    async def ensure(self, client, layer, chain_id, parent, diff_id, downloads, listener) -> None:
        self.downloaded.append(chain_id)
        hook, self.while_downloading = self.while_downloading, None
        if hook is not None:
            hook()
        await asyncio.sleep(0)
        self.storaged.apply(chain_id, parent)


def resolved(name: str, diff_ids: tuple[str, ...], config_digest: str) -> SimpleNamespace:
    manifest = ImageManifest(OCI_MANIFEST, Descriptor("application/vnd.oci.image.config.v1+json", config_digest, 10),
                             tuple(Descriptor(GZ, "sha256:" + f"{i:064x}", 100) for i in range(len(diff_ids))))
    return SimpleNamespace(name=normalize(name), manifest=manifest, top_digest="sha256:" + "e" * 64,
                           manifest_digest="sha256:" + "e" * 64, client=None,
                           config=ImageConfig(diff_ids=diff_ids, platform="linux/amd64"))


IMAGES = {
    "example.com/x:1": resolved("example.com/x:1", (BASE, X_TOP), "sha256:" + "1" * 64),
    "example.com/y:1": resolved("example.com/y:1", (BASE, Y_TOP), "sha256:" + "2" * 64),
}
X_ID = IMAGES["example.com/x:1"].manifest.config.digest
Y_ID = IMAGES["example.com/y:1"].manifest.config.digest


class Resolver:
    async def resolve(self, image, cri_auth):
        return IMAGES[image]


@pytest.fixture
def world(tmp_path: Path):
    storaged = ModelStoraged()
    layers = ModelLayers(storaged)
    store = ImageStore(tmp_path)
    store.load()
    puller = Puller(ImagedConfig(), Resolver(), layers, storaged, store, SyncGate(), lambda _: None)
    # Image x is stored: its layers and its reference.
    storaged.store(X_CHAIN)
    storaged.holds[X_ID] = X_CHAIN[-1]
    return SimpleNamespace(storaged=storaged, layers=layers, store=store, puller=puller)


def test_layers_found_stored_are_held_while_the_rest_downloads(world):
    # While y's own layer downloads, image x (the only holder of the shared base) is removed.
    world.layers.while_downloading = lambda: world.storaged.release(X_ID)
    record = asyncio.run(world.puller.pull("example.com/y:1", None))
    assert record.id == Y_ID
    # The base was held by the pull: never collected, never fetched again, and no parent wait.
    assert world.layers.downloaded == [Y_CHAIN[1]]
    assert world.storaged.holds == {Y_ID: Y_CHAIN[-1]}  # the pull's own hold is released
    assert set(world.storaged.layers) == set(Y_CHAIN)


def test_layers_collected_before_the_pull_holds_them_are_fetched_again(world):
    # Between has_layers and the pull's hold, x is removed and the base collected.
    world.storaged.after_has_layers = lambda: world.storaged.release(X_ID)
    record = asyncio.run(world.puller.pull("example.com/y:1", None))
    assert record.id == Y_ID
    assert sorted(world.layers.downloaded) == sorted(Y_CHAIN)
    assert world.storaged.holds == {Y_ID: Y_CHAIN[-1]}


def test_every_layer_stored_and_collected_before_the_reference_is_fetched_again(world):
    # Pulling x again finds everything stored; a removal of x runs before the reference is set.
    def remove_x() -> None:
        world.storaged.release(X_ID)

    world.storaged.after_has_layers = remove_x
    record = asyncio.run(world.puller.pull("example.com/x:1", None))
    assert record.id == X_ID
    assert sorted(world.layers.downloaded) == sorted(X_CHAIN)
    assert world.storaged.holds == {X_ID: X_CHAIN[-1]}
    assert not [k for k in world.storaged.holds if k.startswith(PULL_HOLD_PREFIX)]


def test_a_failed_pull_releases_its_hold(world):
    def fail(chain_id, parent):
        raise FailedPrecondition("unpack refused")

    world.storaged.apply = fail
    with pytest.raises(FailedPrecondition):
        asyncio.run(world.puller.pull("example.com/y:1", None))
    assert world.storaged.holds == {X_ID: X_CHAIN[-1]}


def test_a_removal_never_falls_between_the_reference_and_the_record(world):
    """The image lock: a removal (record, then reference) waits for a pull's (reference, then record)."""
    store, storaged = world.store, world.storaged

    async def remove(image_id: str) -> None:  # what ImagedService.remove_image does
        async with store.image_lock(image_id):
            if store.get(image_id) is None:
                return
            await store.delete(image_id)
            await storaged.call(SET_IMAGE_LAYERS, SimpleNamespace(image_id=image_id, chain_id=""))

    async def scenario() -> None:
        await world.puller.pull("example.com/x:1", None)
        original = storaged.call
        removal: list[asyncio.Task[None]] = []

        async def call(method, req, timeout=None):
            answer = await original(method, req, timeout)
            if method is SET_IMAGE_LAYERS and req.image_id == X_ID and req.chain_id and not removal:
                # The pull has set x's reference and not yet written its record: remove x now.
                removal.append(asyncio.create_task(remove(X_ID)))
                await asyncio.sleep(0.01)
            return answer

        storaged.call = call
        await world.puller.pull("example.com/x:1", None)
        await removal[0]

    asyncio.run(scenario())
    # Whichever came last decided; what matters is that record and reference agree.
    assert (world.store.get(X_ID) is None) == (X_ID not in world.storaged.holds)


def test_keyed_lock_serialises_one_key_and_forgets_idle_keys():
    async def scenario() -> list[str]:
        locks: KeyedLock[str] = KeyedLock()
        events: list[str] = []

        async def worker(key: str, name: str) -> None:
            async with locks.hold(key):
                events.append(f"{name}+")
                await asyncio.sleep(0.01)
                events.append(f"{name}-")

        await asyncio.gather(worker("a", "1"), worker("a", "2"), worker("b", "3"))
        assert len(locks) == 0
        return events

    events = asyncio.run(scenario())
    first_a = events.index("1+")
    assert events[first_a + 1] in ("1-", "3+", "3-")  # "2" never enters while "1" holds "a"
    assert events.index("2+") > events.index("1-")

