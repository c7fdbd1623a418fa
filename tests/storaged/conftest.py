"""Fixtures for storaged's tests: coroutine tests, state dirs, mount cleanup, a host canary."""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from services.storaged.layer_store import LayerStore
from services.storaged.mount import mountpoints
from services.storaged.service import StoragedService
from shared.config import Config
from shared.daemon import DaemonContext
from shared.schema.storaged import ApplyLayerRequest, ImageLayersRequest
from shared.tracing import Tracing
from shared.transport import EventPublisher
from tests.storaged.tars import Blob

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers and mounting overlays need root")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in a fresh event loop each (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


def unmount_below(base: Path) -> None:
    prefix = os.path.realpath(base).rstrip("/") + "/"
    for point in sorted((p for p in mountpoints() if p.startswith(prefix)), key=len, reverse=True):
        _libc.umount2(os.fsencode(point), _MNT_DETACH)


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_below(tmp_path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def canary() -> Iterator[Path]:
    """A directory outside every state dir that hostile layers aim at; it must never change."""
    base = Path(tempfile.mkdtemp(prefix="cx-canary-", dir="/tmp"))
    (base / "victim").write_text("untouched\n")
    os.chmod(base / "victim", 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


async def open_store(root: Path) -> LayerStore:
    store = LayerStore(root)
    await store.load()
    return store


def hand_over(store: LayerStore, blob: Blob, name: str = "") -> str:
    """Drop the blob into incoming/ as imaged does; return its name there."""
    name = name or blob.diff_id.replace(":", "-")
    (store.incoming_dir / name).write_bytes(blob.data)
    return name


def service_at(root: Path) -> StoragedService:
    """The service as the daemon shell builds it; it only reads the state dir from its context."""
    config = Config()
    # No event publisher: storaged publishes nothing, and one would bind an ipc socket.
    ctx = DaemonContext("storaged", config, Tracing("storaged", config.tracing), cast(EventPublisher, None),
                        root, 0.0)
    return StoragedService(ctx)


async def loaded_service(root: Path) -> StoragedService:
    service = service_at(root)
    await service.load()
    return service


async def pull(service: StoragedService, image_id: str, blobs: list[Blob]) -> str:
    """What imaged does for a pull: hand over and apply each layer, then hold the top chain."""
    for blob in blobs:
        name = hand_over(service.layers, blob)
        await service.apply_layer(ApplyLayerRequest(blob.chain_id, blob.parent_chain_id, blob.diff_id, name,
                                                    blob.media_type))
    await service.set_image_layers(ImageLayersRequest(image_id, blobs[-1].chain_id))
    return blobs[-1].chain_id
