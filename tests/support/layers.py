"""Image layers built in memory: tar streams, compression, digests.

A layer is a tar stream (the "diff"); its ``diff_id`` is the sha256 of the uncompressed
tar, its ``digest`` the sha256 of the blob as stored in the registry (OCI image-spec
config.md "Layer DiffID", descriptor.md "Digests"). Everything here is deterministic:
fixed mtimes and a zero gzip timestamp, so the same call yields the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import zstandard

Compression = Literal["gzip", "zstd", "none"]

# 2023-11-14; any fixed instant works, it only has to be the same on every build.
FIXED_MTIME = 1_700_000_000

# image-spec layer.md "Whiteouts".
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(tar: bytes, compression: Compression, *, level: int | None = None) -> bytes:
    if compression == "gzip":
        # mtime=0 keeps the gzip header, and so the blob digest, reproducible.
        return gzip.compress(tar, compresslevel=6 if level is None else level, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3 if level is None else level).compress(tar)
    if compression == "none":
        return tar
    raise ValueError(f"unknown compression {compression!r}")


def decompress(blob: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        # Frames written by ZstdCompressor.compress carry their size; stream anyway so
        # blobs from other writers (no content size) decode too.
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


@dataclass(frozen=True)
class Layer:
    """One layer blob as pushed to a registry."""

    blob: bytes
    compression: Compression
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.blob)

    @property
    def size(self) -> int:
        return len(self.blob)

    def tar(self) -> bytes:
        return decompress(self.blob, self.compression)


def layer_from_tar(tar: bytes, compression: Compression = "gzip", *, level: int | None = None) -> Layer:
    return Layer(blob=compress(tar, compression, level=level), compression=compression, diff_id=sha256_digest(tar))


class TarBuilder:
    """Writes a layer tar in memory, entry by entry, in the order given.

    Names are written as given minus a leading "/" (layer tars hold relative paths).
    With ``parents=True`` missing parent directories get an explicit entry first, as
    ``docker build`` layers do; pass ``parents=False`` to test extractors that must
    create implied parents themselves.
    """

    def __init__(self, *, parents: bool = True) -> None:
        self._buffer = io.BytesIO()
        # PAX so long names, big files and non-ASCII names need no GNU extensions.
        # Open across calls on purpose: entries are added one by one, build() closes it.
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._parents = parents
        self._dirs: set[str] = set()

    @staticmethod
    def _name(path: str) -> str:
        return path.lstrip("/")

    def _info(self, path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self._name(path))
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = FIXED_MTIME
        return info

    def _ensure_parents(self, path: str) -> None:
        if not self._parents:
            return
        for parent in reversed(PurePosixPath(self._name(path)).parents):
            name = str(parent)
            if name not in (".", "") and name not in self._dirs:
                self.dir(name)

    def dir(self, path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> TarBuilder:
        self._ensure_parents(path)
        self._tar.addfile(self._info(path, tarfile.DIRTYPE, mode, uid, gid))
        self._dirs.add(self._name(path).rstrip("/"))
        return self

    def file(self, path: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> TarBuilder:
        self._ensure_parents(path)
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def symlink(self, path: str, target: str, *, uid: int = 0, gid: int = 0) -> TarBuilder:
        self._ensure_parents(path)
        info = self._info(path, tarfile.SYMTYPE, 0o777, uid, gid)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def hardlink(self, path: str, target: str) -> TarBuilder:
        """``target`` is another entry's name in this layer (or lower ones), not a host path."""
        self._ensure_parents(path)
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0)
        info.linkname = target
        self._tar.addfile(info)
        return self

    def whiteout(self, path: str) -> TarBuilder:
        """Delete ``path`` (file or whole directory) from the layers below."""
        entry = PurePosixPath(self._name(path))
        return self.file(str(entry.parent / (WHITEOUT_PREFIX + entry.name)), b"", mode=0o000)

    def opaque(self, directory: str) -> TarBuilder:
        """Hide everything lower layers put in ``directory``; this layer's entries stay."""
        return self.file(str(PurePosixPath(self._name(directory)) / OPAQUE_WHITEOUT), b"", mode=0o000)

    def entry(self, info: tarfile.TarInfo, data: bytes | None = None) -> TarBuilder:
        """Append a hand-made header verbatim (no name cleaning, no parents)."""
        if data is not None:
            info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def build(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()

    def layer(self, compression: Compression = "gzip", *, level: int | None = None) -> Layer:
        return layer_from_tar(self.build(), compression, level=level)


def files_layer(files: Mapping[str, bytes], compression: Compression = "gzip", *, mode: int = 0o644) -> Layer:
    """A layer adding regular files, e.g. ``{"/etc/motd": b"hello\\n"}``."""
    builder = TarBuilder()
    for path, data in files.items():
        builder.file(path, data, mode=mode)
    return builder.layer(compression)


def whiteout_layer(
    deleted: Sequence[str] = (),
    opaque_dirs: Sequence[str] = (),
    added: Mapping[str, bytes] | None = None,
    compression: Compression = "gzip",
) -> Layer:
    """Whiteouts for ``deleted``, opaque markers for ``opaque_dirs``, then ``added`` files.

    Files added inside an opaque dir survive it: the marker only hides lower layers.
    """
    builder = TarBuilder()
    for path in deleted:
        builder.whiteout(path)
    for directory in opaque_dirs:
        builder.dir(directory)
        builder.opaque(directory)
    for path, data in (added or {}).items():
        builder.file(path, data)
    return builder.layer(compression)


def random_layer(
    size_bytes: int,
    compression: Compression = "gzip",
    *,
    seed: int = 0,
    path: str = "/data/random.bin",
) -> Layer:
    """One file of ``size_bytes`` pseudo-random (so incompressible) bytes, for benchmarks.

    Seeded, so two calls with one seed give the same digest (the registry dedups);
    vary ``seed`` for distinct layers. gzip runs at level 1: deflate cannot shrink
    random data, and higher levels only burn time. Held in memory: mind sizes > 1 GiB.
    """
    data = random.Random(seed).randbytes(size_bytes)
    builder = TarBuilder()
    builder.file(path, data)
    return builder.layer(compression, level=1 if compression == "gzip" else None)
