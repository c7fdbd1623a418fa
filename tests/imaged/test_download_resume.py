"""A layer download cut short by an imaged restart resumes from its bytes on disk (real registry)."""

import asyncio
import os
import time

import pytest

from services.imaged.auth import TokenCache
from services.imaged.connections import ConnectionPool
from services.imaged.distribution import RegistryClient
from services.imaged.layers import LayerFetcher
from services.imaged.manifest import Descriptor
from tests.support.images import build_image, layer_media_type
from tests.support.layers import random_layer
from tests.support.lying_registry import LyingRegistry
from tests.support.push import push
from tests.support.registry import REGISTRY_BINARY, Registry

LAYER = random_layer(6 << 20, seed=10)
DESCRIPTOR = Descriptor(layer_media_type(LAYER, "oci"), LAYER.digest, LAYER.size)
CUT_AFTER = 2 << 20


@pytest.fixture(scope="module")
def proxy():
    if not REGISTRY_BINARY.exists():
        pytest.skip("docker-registry is not installed")
    with Registry() as registry, LyingRegistry(registry) as proxy:
        push(registry, "team/big:v1", build_image([LAYER]))
        yield proxy


class NoStoraged:
    """download_blob never talks to storaged."""

    async def call(self, method, args, timeout=None):
        raise AssertionError("storaged must not be called")


async def download(proxy: LyingRegistry, workdir, cancel_after: int | None = None):
    """One imaged's LayerFetcher (prepared as at its start) downloading the layer; with
    `cancel_after`, cancelled past that many bytes, as imaged's shutdown cancels its pulls."""
    pool = ConnectionPool(workdir / "certs.d")
    fetcher = LayerFetcher(workdir / "incoming", NoStoraged(), call_timeout=30)
    fetcher.prepare(max_age_s=600)
    client = RegistryClient(pool.get(proxy.host, True), "team/big", None, TokenCache(), pool.auth_http, 0)
    received = 0
    task: asyncio.Task | None = None

    def on_bytes(n: int) -> None:
        nonlocal received
        received += n
        if cancel_after is not None and received > cancel_after and task is not None:
            task.cancel()

    try:
        task = asyncio.create_task(fetcher.download_blob(client, DESCRIPTOR, asyncio.Semaphore(1), on_bytes))
        await asyncio.wait([task])
        if task.cancelled():
            return None
        path = task.result()
        data = path.read_bytes()
        path.unlink()
        return data
    finally:
        await pool.aclose()


def on_disk(workdir) -> int:
    return sum(p.stat().st_size for p in (workdir / "incoming").iterdir())


def test_download_interrupted_by_a_restart_resumes_from_its_bytes_on_disk(proxy, tmp_path):
    proxy.reset()
    assert asyncio.run(download(proxy, tmp_path, cancel_after=CUT_AFTER)) is None
    kept = on_disk(tmp_path)
    assert CUT_AFTER <= kept < LAYER.size

    assert asyncio.run(download(proxy, tmp_path)) == LAYER.blob
    gets = proxy.requests_for("blobs", LAYER.digest)
    assert [r.headers.get("range") for r in gets] == [None, f"bytes={kept}-"]
    assert on_disk(tmp_path) == 0  # the partial became the blob, which the caller consumed


def test_corrupt_bytes_on_disk_are_fetched_again_from_the_start(proxy, tmp_path):
    proxy.reset()
    asyncio.run(download(proxy, tmp_path, cancel_after=CUT_AFTER))
    (partial,) = (tmp_path / "incoming").iterdir()
    kept = partial.stat().st_size
    with partial.open("r+b") as f:  # one flipped byte: the resumed whole cannot verify
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))

    assert asyncio.run(download(proxy, tmp_path)) == LAYER.blob
    ranges = [r.headers.get("range") for r in proxy.requests_for("blobs", LAYER.digest)]
    assert ranges == [None, f"bytes={kept}-", None]


def test_partial_downloads_older_than_the_pull_timeout_are_removed_at_start(proxy, tmp_path):
    proxy.reset()
    asyncio.run(download(proxy, tmp_path, cancel_after=CUT_AFTER))
    (partial,) = (tmp_path / "incoming").iterdir()
    old = time.time() - 3600
    os.utime(partial, (old, old))
    LayerFetcher(tmp_path / "incoming", NoStoraged(), call_timeout=30).prepare(max_age_s=600)
    assert not partial.exists()
