"""Container root filesystems on real overlay mounts: what containers see, idempotency, restarts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.storaged.mount import OPTIONS_MAX, is_mountpoint, mountpoints, overlay_options, unmount
from shared.errors import AlreadyExists, InvalidArgument, NotFound
from shared.schema.storaged import CreateRootfsRequest, RemoveRootfsRequest
from tests.storaged.conftest import loaded_service, needs_root, pull
from tests.storaged.tars import Blob, device, directory, file, layer, opaque, symlink, whiteout

pytestmark = needs_root


def image_layers() -> list[Blob]:
    base = layer([
        directory("etc"), file("etc/passwd", b"root:x:0:0\n"), file("etc/group", b"root:x:0:\n"),
        directory("var/lib/app"), file("var/lib/app/a", b"a"), file("var/lib/app/b", b"b"),
        directory("opt/keep"), file("opt/keep/k", b"k"), file("bin/sh", b"#!", mode=0o755),
        symlink("bin/ash", "sh"),
    ])
    top = layer([
        directory("etc"), whiteout("etc/group"), file("etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n"),
        directory("var/lib/app"), opaque("var/lib/app"), file("var/lib/app/c", b"c"),
        whiteout("bin/ash"), device("dev/null", b"3", 1, 3),
    ], parent=base.chain_id)
    return [base, top]


def count_mounts(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == os.path.realpath(path))


async def test_rootfs_shows_the_image_with_whiteouts_and_opaque_dirs_applied(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    rootfs = await service.create_rootfs(CreateRootfsRequest("c1", chain))
    merged = Path(rootfs.path)
    assert is_mountpoint(merged)
    assert (merged / "etc/passwd").read_bytes() == b"root:x:0:0\nuser:x:1000:1000\n"
    assert not (merged / "etc/group").exists()  # whited out by the top layer
    assert sorted(os.listdir(merged / "var/lib/app")) == ["c"]  # opaque: a and b hidden
    assert (merged / "opt/keep/k").read_bytes() == b"k"  # untouched lower content shows through
    assert not os.path.lexists(merged / "bin/ash") and (merged / "bin/sh").exists()
    assert os.major(os.lstat(merged / "dev/null").st_rdev) == 1


async def test_container_writes_go_to_its_upper_dir_only(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image_layers()
    chain = await pull(service, "img", blobs)
    merged = Path((await service.create_rootfs(CreateRootfsRequest("c1", chain))).path)
    (merged / "etc/passwd").write_text("changed\n")
    (merged / "opt/keep/k").unlink()
    upper = service.rootfs.containers_dir / "c1" / "upper"
    assert (upper / "etc/passwd").read_text() == "changed\n"
    assert os.lstat(upper / "opt/keep/k").st_rdev == 0  # a whiteout in the upper dir
    assert (service.layers.diff_dir(blobs[0].chain_id) / "opt/keep/k").read_bytes() == b"k"
    assert (service.layers.diff_dir(blobs[1].chain_id) / "etc/passwd").read_bytes().startswith(b"root")


async def test_create_rootfs_is_idempotent(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    first = await service.create_rootfs(CreateRootfsRequest("c1", chain))
    second = await service.create_rootfs(CreateRootfsRequest("c1", chain))
    assert first == second
    assert count_mounts(Path(first.path)) == 1


async def test_create_rootfs_with_another_chain_for_the_same_container_is_refused(root: Path) -> None:
    service = await loaded_service(root)
    blobs = image_layers()
    chain = await pull(service, "img", blobs)
    await service.create_rootfs(CreateRootfsRequest("c1", chain))
    with pytest.raises(AlreadyExists):
        await service.create_rootfs(CreateRootfsRequest("c1", blobs[0].chain_id))


async def test_create_rootfs_of_an_unknown_chain_is_not_found(root: Path) -> None:
    service = await loaded_service(root)
    with pytest.raises(NotFound):
        await service.create_rootfs(CreateRootfsRequest("c1", "sha256:" + "0" * 64))
    assert os.listdir(service.rootfs.containers_dir) == []


@pytest.mark.parametrize("container_id", ["", "../escape", "a/b", "a:b", "a,b", ".hidden", "x" * 129])
async def test_malformed_container_ids_are_refused(root: Path, container_id: str) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    with pytest.raises(InvalidArgument):
        await service.create_rootfs(CreateRootfsRequest(container_id, chain))
    with pytest.raises(InvalidArgument):
        await service.remove_rootfs(RemoveRootfsRequest(container_id))


async def test_remove_rootfs_unmounts_deletes_and_is_idempotent(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    merged = Path((await service.create_rootfs(CreateRootfsRequest("c1", chain))).path)
    (merged / "scratch").write_bytes(b"x" * 10_000)
    await service.remove_rootfs(RemoveRootfsRequest("c1"))
    assert not is_mountpoint(merged)
    assert os.listdir(service.rootfs.containers_dir) == []
    await service.remove_rootfs(RemoveRootfsRequest("c1"))
    await service.remove_rootfs(RemoveRootfsRequest("never-existed"))
    assert service.layers.get(chain) is not None  # the image still holds it


async def test_remove_rootfs_detaches_a_busy_mount(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    merged = Path((await service.create_rootfs(CreateRootfsRequest("c1", chain))).path)
    busy = os.open(merged / "etc", os.O_RDONLY | os.O_DIRECTORY)  # keeps the mount busy
    try:
        await service.remove_rootfs(RemoveRootfsRequest("c1"))
        assert not is_mountpoint(merged)
        assert os.listdir(service.rootfs.containers_dir) == []
    finally:
        os.close(busy)


async def test_recorded_rootfs_are_remounted_at_start(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    merged = Path((await service.create_rootfs(CreateRootfsRequest("c1", chain))).path)
    (merged / "mine").write_text("kept\n")
    unmount(merged)  # e.g. a host reboot, or someone unmounted it by hand
    assert not is_mountpoint(merged)

    restarted = await loaded_service(root)
    assert is_mountpoint(merged)
    assert (merged / "mine").read_text() == "kept\n"
    assert (merged / "opt/keep/k").read_bytes() == b"k"
    await restarted.remove_rootfs(RemoveRootfsRequest("c1"))


async def test_a_container_dir_without_record_is_unmounted_and_removed_at_start(root: Path) -> None:
    service = await loaded_service(root)
    chain = await pull(service, "img", image_layers())
    merged = Path((await service.create_rootfs(CreateRootfsRequest("c1", chain))).path)
    # Crash between deleting the record and deleting the dir.
    (root / "records" / "rootfs" / "c1.json").unlink()
    (service.rootfs.containers_dir / ".trash-0123").mkdir()

    restarted = await loaded_service(root)
    assert not is_mountpoint(merged)
    assert os.listdir(restarted.rootfs.containers_dir) == []


async def test_a_rootfs_of_45_layers_mounts_beyond_the_one_page_option_limit(root: Path) -> None:
    service = await loaded_service(root)
    blobs: list[Blob] = []
    for i in range(45):
        blobs.append(layer([directory("layers"), file(f"layers/{i:02d}", str(i).encode())],
                           parent=blobs[-1].chain_id if blobs else ""))
    chain = await pull(service, "deep", blobs)
    lowers = [str(service.layers.diff_dir(b.chain_id)) for b in reversed(blobs)]
    assert len(overlay_options(lowers, "/u", "/w")) > OPTIONS_MAX  # absolute paths cannot fit
    merged = Path((await service.create_rootfs(CreateRootfsRequest("deep", chain))).path)
    assert sorted(os.listdir(merged / "layers")) == [f"{i:02d}" for i in range(45)]
    assert os.path.realpath(merged) in mountpoints()
    await service.remove_rootfs(RemoveRootfsRequest("deep"))
    assert not is_mountpoint(merged)
