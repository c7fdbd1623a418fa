"""Unpacking real layers into a real store: metadata kept, formats read, hostile layers refused cleanly."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from services.storaged import unpack
from services.storaged.compression import Compression, compression_for
from services.storaged.layer_store import LayerStore
from services.storaged.tarsafety import LayerPaths
from shared.errors import DataLoss, InvalidArgument
from shared.schema.storaged import ApplyLayerRequest, Layer
from tests.storaged.conftest import hand_over, needs_root, open_store
from tests.storaged.tars import (
    MTIME,
    Blob,
    Entry,
    compress,
    device,
    digest,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    tar_bytes,
    walk,
    whiteout,
)

pytestmark = needs_root

# CAP_NET_RAW permitted+effective, VFS_CAP_REVISION_2 (linux/capability.h).
NET_RAW_CAP = b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + b"\x00" * 12


async def apply(store: LayerStore, blob: Blob, name: str = "") -> Layer:
    blob_name = hand_over(store, blob, name)
    req = ApplyLayerRequest(blob.chain_id, blob.parent_chain_id, blob.diff_id, blob_name, blob.media_type)
    return await store.apply(req)


def diff(store: LayerStore, blob: Blob) -> Path:
    return store.diff_dir(blob.chain_id)


# -- metadata ----------------------------------------------------------------------------------


async def test_unpack_preserves_modes_owners_and_mtimes(root: Path) -> None:
    store = await open_store(root)
    blob = layer([
        directory("srv", mode=0o1777, uid=10, gid=20, mtime=MTIME - 100),
        file("srv/suid", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        file("srv/secret", b"s", mode=0o640, uid=1234, gid=5678, mtime=MTIME + 0.25),
        symlink("srv/link", "secret", uid=7, gid=8, mtime=MTIME - 5),
        directory("srv/sub", mode=0o700, uid=3, gid=4, mtime=MTIME - 200),
        file("srv/sub/late", b"written after the directory entry"),
    ])
    result = await apply(store, blob)
    d = diff(store, blob)
    srv, suid, secret, link, sub = (os.lstat(d / p) for p in ("srv", "srv/suid", "srv/secret", "srv/link",
                                                             "srv/sub"))
    assert stat.S_IMODE(srv.st_mode) == 0o1777 and (srv.st_uid, srv.st_gid) == (10, 20)
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert stat.S_IMODE(secret.st_mode) == 0o640 and (secret.st_uid, secret.st_gid) == (1234, 5678)
    assert secret.st_mtime_ns == (MTIME * 10**9) + 250_000_000
    assert stat.S_ISLNK(link.st_mode) and (link.st_uid, link.st_gid) == (7, 8)
    assert link.st_mtime_ns == (MTIME - 5) * 10**9
    # Directory mtimes survive the entries written into them afterwards.
    assert srv.st_mtime_ns == (MTIME - 100) * 10**9
    assert sub.st_mtime_ns == (MTIME - 200) * 10**9
    assert (d / "srv/sub/late").read_bytes() == b"written after the directory entry"
    assert result.inodes == 7 and result.size > 0


async def test_unpack_preserves_xattrs_including_file_capabilities(root: Path) -> None:
    store = await open_store(root)
    blob = layer([
        directory("d", xattrs={"trusted.note": b"dir", "user.mime": b"inode/directory"}),
        # A non-root owner: chown would clear the capability if it were set first.
        file("d/ping", b"\x7fELF", mode=0o755, uid=100, gid=100,
             xattrs={"security.capability": NET_RAW_CAP, "user.comment": b"caf\xe9"}),
        symlink("d/l", "ping", xattrs={"trusted.link": b"1"}),
    ])
    await apply(store, blob)
    d = diff(store, blob)
    assert os.getxattr(d / "d/ping", "security.capability") == NET_RAW_CAP
    assert os.getxattr(d / "d/ping", "user.comment") == b"caf\xe9"
    assert os.getxattr(d / "d", "trusted.note") == b"dir"
    assert os.getxattr(d / "d", "user.mime") == b"inode/directory"
    assert os.getxattr(d / "d/l", "trusted.link", follow_symlinks=False) == b"1"


async def test_unpack_keeps_hardlinks_as_one_inode(root: Path) -> None:
    store = await open_store(root)
    blob = layer([file("bin/busybox", b"BB", mode=0o755), hardlink("bin/sh", "bin/busybox"),
                  hardlink("usr/bin/ls", "./bin/busybox")])
    await apply(store, blob)
    d = diff(store, blob)
    inodes = {os.lstat(d / p).st_ino for p in ("bin/busybox", "bin/sh", "usr/bin/ls")}
    assert len(inodes) == 1
    assert os.lstat(d / "bin/sh").st_nlink == 3


async def test_unpack_stores_symlinks_without_following_them(root: Path, canary: Path) -> None:
    store = await open_store(root)
    blob = layer([symlink("abs", str(canary / "victim")), symlink("rel", "../../../../../../../etc/shadow")])
    await apply(store, blob)
    d = diff(store, blob)
    assert os.readlink(d / "abs") == str(canary / "victim")
    assert os.readlink(d / "rel") == "../../../../../../../etc/shadow"
    assert (canary / "victim").read_text() == "untouched\n"


async def test_a_file_over_a_symlink_replaces_the_link_not_its_target(root: Path, canary: Path) -> None:
    store = await open_store(root)
    blob = layer([symlink("x", str(canary / "victim")), file("x", b"mine", mode=0o600)])
    await apply(store, blob)
    assert (diff(store, blob) / "x").read_bytes() == b"mine"
    assert not os.path.islink(diff(store, blob) / "x")
    assert (canary / "victim").read_text() == "untouched\n"


async def test_unpack_creates_device_nodes_and_fifos(root: Path) -> None:
    store = await open_store(root)
    blob = layer([device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
                  device("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660),
                  device("run/fifo", tarfile.FIFOTYPE, 0, 0, mode=0o620)])
    await apply(store, blob)
    d = diff(store, blob)
    null, loop, fifo = (os.lstat(d / p) for p in ("dev/null", "dev/loop0", "run/fifo"))
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    assert stat.S_IMODE(loop.st_mode) == 0o660
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    assert null.st_mtime == MTIME


async def test_a_file_over_a_fifo_is_written_without_opening_the_fifo(root: Path) -> None:
    # A naive extractor would open the fifo for writing and block forever.
    store = await open_store(root)
    blob = layer([device("p", tarfile.FIFOTYPE, 0, 0), file("p", b"data")])
    await asyncio.wait_for(apply(store, blob), 10)
    assert (diff(store, blob) / "p").read_bytes() == b"data"


async def test_whiteouts_and_opaque_markers_become_overlayfs_forms(root: Path) -> None:
    store = await open_store(root)
    blob = layer([directory("etc"), whiteout("etc/group"), directory("var/lib"), opaque("var/lib"),
                  file("var/lib/new", b"n"), file(".wh..wh.plnk/ignored")])
    await apply(store, blob)
    d = diff(store, blob)
    group = os.lstat(d / "etc/group")
    assert stat.S_ISCHR(group.st_mode) and group.st_rdev == 0
    assert os.getxattr(d / "var/lib", "trusted.overlay.opaque") == b"y"
    assert not (d / "etc/.wh.group").exists() and not (d / "var/lib/.wh..wh..opq").exists()
    assert not (d / ".wh..wh.plnk").exists()


# -- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
async def test_unpack_reads_gzip_zstd_and_plain_layers(root: Path, compression: str) -> None:
    store = await open_store(root)
    blob = layer([file("hello", b"world" * 1000)], compression=compression)  # type: ignore[arg-type]
    result = await apply(store, blob)
    assert (diff(store, blob) / "hello").read_bytes() == b"world" * 1000
    assert result.diff_id == blob.diff_id


@pytest.mark.parametrize(("media_type", "compression"), [
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"),
    ("", "zstd"),  # no media type: sniffed
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "none"),  # mislabelled: content decides
    ("application/vnd.oci.image.layer.v1.tar", "gzip"),
])
async def test_unpack_trusts_magic_bytes_over_the_layer_media_type(root: Path, media_type: str,
                                                                    compression: str) -> None:
    store = await open_store(root)
    tar = tar_bytes([file("f", b"x")])
    data = compress(tar, compression)  # type: ignore[arg-type]
    blob = Blob(data, digest(tar), digest(tar), "", media_type)
    await apply(store, blob)
    assert (diff(store, blob) / "f").read_bytes() == b"x"


@pytest.mark.parametrize(("media_type", "magic", "expected"), [
    ("application/vnd.oci.image.layer.v1.tar+gzip", b"\x1f\x8b\x08\x00", Compression.GZIP),
    ("application/vnd.oci.image.layer.v1.tar+gzip", b"etc/", Compression.NONE),
    ("application/vnd.oci.image.layer.v1.tar", b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    ("", b"", Compression.NONE),
])
def test_compression_for_prefers_magic_bytes(media_type: str, magic: bytes, expected: Compression) -> None:
    assert compression_for(media_type, magic) is expected


@pytest.mark.parametrize("media_type", ["application/vnd.oci.image.config.v1+json",
                                        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
                                        "application/octet-stream"])
async def test_non_layer_media_types_are_refused(root: Path, media_type: str) -> None:
    store = await open_store(root)
    tar = tar_bytes([file("f")])
    with pytest.raises(InvalidArgument, match="media type"):
        await apply(store, Blob(tar, digest(tar), digest(tar), "", media_type))
    assert_nothing_left(store)


async def test_diff_id_mismatch_is_refused_and_leaves_nothing(root: Path) -> None:
    store = await open_store(root)
    real = layer([file("f", b"real")])
    claimed = digest(b"something else")
    with pytest.raises(DataLoss, match="diff_id"):
        await apply(store, Blob(real.data, claimed, claimed, "", real.media_type))
    assert_nothing_left(store)
    assert store.get(claimed) is None


def _corrupt_second_header(tar: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        offset = t.getmembers()[1].offset
    return tar[:offset] + b"X" + tar[offset + 1:]  # its checksum no longer matches


@pytest.mark.parametrize("damage", ["truncated", "garbage_after_end", "not_a_tar", "corrupt_zstd", "empty",
                                    "corrupt_header_midway"])
async def test_damaged_streams_are_refused_and_leave_nothing(root: Path, damage: str) -> None:
    store = await open_store(root)
    tar = tar_bytes([file("a", b"A" * 5000), file("b", b"B" * 5000), file("c", b"C")])
    data = {
        # tarfile would take the bad header for the end of the archive and drop b and c.
        "corrupt_header_midway": _corrupt_second_header(tar),
        "truncated": compress(tar, "gzip")[:-40],
        "garbage_after_end": tar + b"\x01" * 512,
        "not_a_tar": b"hello, this is not a tar archive at all" * 20,
        "corrupt_zstd": compress(tar, "zstd")[:20] + b"\xff" * 64,
        "empty": b"",
    }[damage]
    with pytest.raises(InvalidArgument):
        await apply(store, Blob(data, digest(data), digest(data), "", ""))
    assert_nothing_left(store)


# -- hostile layers ----------------------------------------------------------------------------


def _hostile(canary: Path) -> dict[str, list[Entry]]:
    c = str(canary)
    up = "../" * 12
    return {
        "absolute_path": [file(f"{c}/victim", b"pwned")],
        "absolute_new_file": [file(f"{c}/planted", b"pwned")],
        "dotdot_path": [file(f"{up}{c[1:]}/victim", b"pwned")],
        "dotdot_inside": [directory("a"), file(f"a/../../{up}{c[1:]}/planted", b"pwned")],
        "symlink_parent": [symlink("esc", c), file("esc/victim", b"pwned")],
        "relative_symlink_parent": [directory("a"), symlink("a/b", f"{up}{c[1:]}"), file("a/b/victim", b"x")],
        "symlink_parent_mkdir": [symlink("esc", c), directory("esc/newdir")],
        "symlink_parent_device": [symlink("esc", c), device("esc/null", tarfile.CHRTYPE, 1, 3)],
        "symlink_chain": [symlink("a", "b"), symlink("b", f"{up}{c[1:]}"), file("a/victim", b"pwned")],
        "hardlink_forward_reference": [hardlink("early", "later"), symlink("later", f"{c}/victim"),
                                       file("early", b"pwned")],
        "dir_replaced_by_symlink": [directory("d"), file("d/ok"), symlink("d", c), file("d/victim", b"x")],
        "hardlink_absolute": [hardlink("h", f"{c}/victim")],
        "hardlink_dotdot": [hardlink("h", f"{up}{c[1:]}/victim")],
        "hardlink_through_symlink": [symlink("l", c), hardlink("h", "l/victim"), file("h", b"pwned")],
        "hardlink_to_lower_layer": [hardlink("h", "etc/shadow")],
        "raw_whiteout_device": [device("x", tarfile.CHRTYPE, 0, 0)],
        "nul_in_name": [Entry("ok", pax={"path": "a\0/etc/victim"})],
        "overlay_xattr": [directory("d", xattrs={"trusted.overlay.redirect": b"/"})],
        "whiteout_as_directory": [file(".wh.x/y")],
        "over_long_name": [file("n" * 256)],
        "unsupported_type": [Entry("vol", kind=b"V")],
        "whiteout_through_symlink": [symlink("esc", c), whiteout("esc/victim")],
        "opaque_through_symlink": [symlink("esc", c), opaque("esc")],
        "huge_pax_header": [Entry("big", pax={"comment": "x" * (2 << 20)})],  # read whole by tarfile
    }


HOSTILE = list(_hostile(Path("/x")))


@pytest.mark.parametrize("case", HOSTILE)
async def test_hostile_layers_are_refused_leaving_nothing_and_the_host_untouched(
        root: Path, canary: Path, case: str) -> None:
    store = await open_store(root)
    before = {p: (s.st_mode, s.st_size, s.st_mtime_ns, s.st_nlink) for p, s in walk(canary)}
    # Honest entries first, so the refusal comes after real writes that must be undone.
    entries = [directory("usr"), file("usr/ok", b"o" * 10_000), *_hostile(canary)[case]]
    blob = layer(entries)
    with pytest.raises(InvalidArgument):
        await apply(store, blob)
    assert_nothing_left(store)
    assert store.get(blob.chain_id) is None
    after = {p: (s.st_mode, s.st_size, s.st_mtime_ns, s.st_nlink) for p, s in walk(canary)}
    assert after == before
    assert (canary / "victim").read_text() == "untouched\n"


def assert_nothing_left(store: LayerStore) -> None:
    assert os.listdir(store.layers_dir) == []
    assert os.listdir(store.incoming_dir) == []
    assert len(store) == 0


class _NoParentChecks(LayerPaths):
    """tarsafety with its parent checks switched off, to test the unpacker's own line of defence."""

    def _check_parents(self, path: tuple[str, ...]) -> None:
        return


@pytest.mark.parametrize("case", ["symlink_parent", "relative_symlink_parent", "symlink_parent_mkdir",
                                  "symlink_parent_device", "whiteout_through_symlink"])
async def test_unpacker_never_follows_a_symlink_even_when_tarsafety_misses_it(
        root: Path, canary: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpack, "LayerPaths", _NoParentChecks)
    store = await open_store(root)
    before = sorted(os.listdir(canary))
    with pytest.raises(InvalidArgument, match=r"(symbolic links|Not a directory)"):
        await apply(store, layer(_hostile(canary)[case]))
    assert_nothing_left(store)
    assert sorted(os.listdir(canary)) == before
    assert (canary / "victim").read_text() == "untouched\n"
