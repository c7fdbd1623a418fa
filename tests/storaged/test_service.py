"""The service: who holds which layer and when layers go, disk usage, readiness, and the real nng wire."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.storaged.usage import UsageMonitor, disk_usage
from shared.config import Config, PathsConfig, StoragedConfig
from shared.errors import InvalidArgument, NotFound
from shared.schema.common import HEALTH, HealthRequest
from shared.schema.storaged import (
    APPLY_LAYER,
    CREATE_ROOTFS,
    FS_USAGE,
    HAS_LAYERS,
    REMOVE_ROOTFS,
    SET_IMAGE_LAYERS,
    SYNC_IMAGES,
    ApplyLayerRequest,
    CreateRootfsRequest,
    FsUsageRequest,
    HasLayersRequest,
    ImageLayersRequest,
    RemoveRootfsRequest,
    SyncImagesRequest,
)
from shared.tracing import Tracing
from shared.transport import DaemonClient
from tests.storaged.conftest import hand_over, loaded_service, needs_root, pull, service_at, unmount_below
from tests.storaged.tars import Blob, directory, file, hardlink, layer

pytestmark = needs_root
REPO = Path(__file__).resolve().parents[2]


def image(name: str, base: Blob | None = None, depth: int = 2) -> list[Blob]:
    blobs = [base] if base else []
    for i in range(depth - len(blobs)):
        blobs.append(layer([file(f"{name}-{i}", name.encode())], parent=blobs[-1].chain_id if blobs else ""))
    return blobs


def stored(service: object, blobs: list[Blob]) -> list[bool]:
    return [service.layers.get(b.chain_id) is not None for b in blobs]  # type: ignore[attr-defined]


# -- holds and collection ----------------------------------------------------------------------


async def test_releasing_an_image_removes_its_layers(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image("a", depth=3)
    await pull(service, "a", blobs)
    response = await service.set_image_layers(ImageLayersRequest("a", ""))
    assert response.removed_layers == 3
    assert stored(service, blobs) == [False, False, False]
    assert os.listdir(service.layers.layers_dir) == []


async def test_a_shared_base_stays_while_another_image_holds_it(root: Path) -> None:
    service = await loaded_service(root)
    a = image("a")
    b = image("b", base=a[0])
    await pull(service, "a", a)
    await pull(service, "b", b)
    assert (await service.set_image_layers(ImageLayersRequest("a", ""))).removed_layers == 1
    assert stored(service, a) == [True, False]
    assert (await service.set_image_layers(ImageLayersRequest("b", ""))).removed_layers == 2
    assert len(service.layers) == 0


async def test_an_image_holding_an_ancestor_chain_keeps_it(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image("a", depth=3)
    await pull(service, "full", blobs)
    await service.set_image_layers(ImageLayersRequest("base", blobs[0].chain_id))
    assert (await service.set_image_layers(ImageLayersRequest("full", ""))).removed_layers == 2
    assert stored(service, blobs) == [True, False, False]


async def test_a_container_keeps_its_layers_after_its_image_is_released(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image("a")
    chain = await pull(service, "a", blobs)
    await service.create_rootfs(CreateRootfsRequest("c1", chain))
    assert (await service.set_image_layers(ImageLayersRequest("a", ""))).removed_layers == 0
    assert stored(service, blobs) == [True, True]
    await service.remove_rootfs(RemoveRootfsRequest("c1"))
    assert stored(service, blobs) == [False, False]
    assert os.listdir(service.layers.layers_dir) == []


async def test_moving_an_image_to_a_new_chain_frees_the_old_one(root: Path) -> None:
    service = await loaded_service(root)
    old, new = image("old"), image("new")
    await pull(service, "img", old)
    await pull(service, "img", new)
    assert stored(service, old) == [False, False] and stored(service, new) == [True, True]


async def test_releasing_an_unknown_image_is_a_no_op(root: Path) -> None:
    service = await loaded_service(root)
    assert (await service.set_image_layers(ImageLayersRequest("nope", ""))).removed_layers == 0


async def test_holding_a_chain_that_is_not_stored_is_not_found(root: Path) -> None:
    service = await loaded_service(root)
    with pytest.raises(NotFound):
        await service.set_image_layers(ImageLayersRequest("img", "sha256:" + "1" * 64))
    with pytest.raises(InvalidArgument):
        await service.set_image_layers(ImageLayersRequest("", "sha256:" + "1" * 64))


async def test_sync_images_replaces_every_hold_and_collects_orphans(root: Path) -> None:
    service = await loaded_service(root)
    a, b = image("a"), image("b")
    await pull(service, "a", a)
    await pull(service, "b", b)
    orphan = layer([file("half-pulled")])  # a pull that died before its image held it
    name = hand_over(service.layers, orphan)
    await service.apply_layer(ApplyLayerRequest(orphan.chain_id, "", orphan.diff_id, name, orphan.media_type))

    response = await service.sync_images(SyncImagesRequest({"b": b[-1].chain_id, "b2": b[0].chain_id}))
    assert response.dropped == ("a",)
    assert response.removed_layers == 3
    assert stored(service, a) == [False, False] and stored(service, b) == [True, True]
    assert service.layers.get(orphan.chain_id) is None


async def test_sync_images_refuses_malformed_chain_ids(root: Path) -> None:
    service = await loaded_service(root)
    with pytest.raises(InvalidArgument):
        await service.sync_images(SyncImagesRequest({"a": "latest"}))


async def test_image_holds_survive_a_restart(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image("a")
    await pull(service, "a", blobs)
    restarted = await loaded_service(root)
    assert restarted.images.images == {"a": blobs[-1].chain_id}
    assert (await restarted.set_image_layers(ImageLayersRequest("a", ""))).removed_layers == 2


async def test_has_layers_answers_per_chain(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image("a")
    await pull(service, "a", blobs)
    response = await service.has_layers(HasLayersRequest((blobs[1].chain_id, "sha256:" + "2" * 64,
                                                          blobs[0].chain_id)))
    assert response.present == (True, False, True)


# -- readiness and usage -----------------------------------------------------------------------


async def test_readiness_follows_loading(root: Path) -> None:
    service = service_at(root)
    assert not service.readiness().ready
    await service.load()
    ready = service.readiness()
    assert ready.ready and ready.info == {"layers": "0", "rootfs": "0"}


def test_disk_usage_counts_hard_links_once_and_does_not_follow_symlinks(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "d" / "f", tmp_path / "d" / "g")
    (tmp_path / "d" / "l").symlink_to("/usr")
    usage = disk_usage(tmp_path / "d")
    assert usage.inodes == 3  # d, f (= g), l
    assert 100_000 <= usage.bytes < 100_000 + 3 * 8192


async def test_usage_is_served_from_cache_and_refreshed_in_the_background(tmp_path: Path) -> None:
    layers, containers = tmp_path / "layers", tmp_path / "containers"
    (containers / "c1" / "upper").mkdir(parents=True)
    layers.mkdir()
    monitor = UsageMonitor(layers, containers, interval=0.2)
    refresher = asyncio.create_task(monitor.run())
    try:
        first = await monitor.current()
        (layers / "blob").write_bytes(b"x" * 1_000_000)
        (containers / "c1" / "upper" / "w").write_bytes(b"y" * 500_000)
        assert await monitor.current() == first  # fresh enough: no walk
        await asyncio.sleep(0.25)
        assert await monitor.current() == first  # stale: answered at once, refresh requested
        deadline = time.monotonic() + 5
        while (now := await monitor.current()) == first:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert now.image_bytes >= first.image_bytes + 1_000_000
        assert now.container_bytes >= first.container_bytes + 500_000
        assert now.mountpoint == str(layers) and now.container_mountpoint == str(containers)
    finally:
        refresher.cancel()


async def test_fs_usage_measures_layers_and_container_uppers(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "a", [layer([directory("d"), file("d/big", b"z" * 300_000),
                                             hardlink("d/same", "d/big")])])
    merged = Path((await service.create_rootfs(CreateRootfsRequest("c1", chain))).path)
    (merged / "written").write_bytes(b"w" * 200_000)
    usage = await service.fs_usage(FsUsageRequest())
    assert 300_000 <= usage.image_bytes < 400_000  # the hard link is counted once
    assert usage.image_inodes >= 4
    assert usage.container_bytes >= 200_000  # the upper dir, not the merged view of the layers
    assert usage.container_bytes < 300_000
    assert usage.mountpoint == str(root / "layers")


# -- the real daemon over nng ------------------------------------------------------------------


@pytest.fixture
def daemon_dirs() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))  # short: unix socket paths are limited
    yield base
    unmount_below(base)
    shutil.rmtree(base, ignore_errors=True)


def test_the_daemon_serves_every_method_over_nng(daemon_dirs: Path) -> None:
    config = Config(paths=PathsConfig(run_dir=str(daemon_dirs / "run"), state_dir=str(daemon_dirs / "state"),
                                      log_dir=str(daemon_dirs / "log")),
                    storaged=StoragedConfig(root=str(daemon_dirs / "store")))
    toml_file = daemon_dirs / "criplex.toml"
    toml_file.write_text(config.to_toml())
    proc = subprocess.Popen([sys.executable, "-m", "services.storaged", "--config", str(toml_file)], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        asyncio.run(_talk_to_the_daemon(config, daemon_dirs / "store"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


async def _talk_to_the_daemon(config: Config, store: Path) -> None:
    client = DaemonClient("storaged", config, Tracing("test", config.tracing))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = await client.call(HEALTH, HealthRequest(), timeout=2)
                if health.ready:
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)
        blobs = image("wire")
        for blob in blobs:
            name = blob.diff_id.replace(":", "-")
            (store / "incoming" / name).write_bytes(blob.data)
            got = await client.call(APPLY_LAYER, ApplyLayerRequest(blob.chain_id, blob.parent_chain_id,
                                                                   blob.diff_id, name, blob.media_type))
            assert got.chain_id == blob.chain_id and got.inodes == 2
        present = await client.call(HAS_LAYERS, HasLayersRequest((blobs[1].chain_id, "sha256:" + "3" * 64)))
        assert present.present == (True, False)
        await client.call(SET_IMAGE_LAYERS, ImageLayersRequest("img", blobs[1].chain_id))
        rootfs = await client.call(CREATE_ROOTFS, CreateRootfsRequest("ctr", blobs[1].chain_id))
        assert sorted(os.listdir(rootfs.path)) == ["wire-0", "wire-1"]
        usage = await client.call(FS_USAGE, FsUsageRequest())
        assert usage.image_inodes >= 1 and usage.mountpoint == str(store / "layers")  # maybe a cached value
        with pytest.raises(InvalidArgument, match="blob name"):
            await client.call(APPLY_LAYER, ApplyLayerRequest(blobs[0].chain_id, "", blobs[0].diff_id,
                                                             "../x", blobs[0].media_type))
        await client.call(REMOVE_ROOTFS, RemoveRootfsRequest("ctr"))
        assert not os.path.exists(rootfs.path)
        synced = await client.call(SYNC_IMAGES, SyncImagesRequest({}))
        assert synced.dropped == ("img",) and synced.removed_layers == 2
    finally:
        client.close()
