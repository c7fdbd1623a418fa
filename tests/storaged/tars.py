"""Layer tars for storaged's tests, built entry by entry, including ones no honest tool would write."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zstandard

from services.storaged.layer_store import chain_id_of

MTIME = 1_700_000_000
Compression = Literal["gzip", "zstd", "none"]
MEDIA_TYPES: dict[Compression, str] = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


@dataclass
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = MTIME
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)
    pax: dict[str, str] = field(default_factory=dict)

    def info(self) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(self.name)
        ti.type = self.kind
        ti.size = len(self.data) if self.kind == tarfile.REGTYPE else 0
        ti.mode, ti.uid, ti.gid, ti.mtime = self.mode, self.uid, self.gid, self.mtime
        ti.linkname = self.link
        ti.devmajor, ti.devminor = self.dev
        ti.pax_headers = {**{f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                             for k, v in self.xattrs.items()}, **self.pax}
        return ti


def file(name: str, data: bytes = b"", **kw: object) -> Entry:
    return Entry(name, tarfile.REGTYPE, data, **kw)


def directory(name: str, mode: int = 0o755, **kw: object) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str, **kw: object) -> Entry:
    return Entry(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, link=target)


def device(name: str, kind: bytes, major: int, minor: int, mode: int = 0o666) -> Entry:
    return Entry(name, kind, mode=mode, dev=(major, minor))


def whiteout(path: str) -> Entry:
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(directory_path: str) -> Entry:
    return file(f"{directory_path}/.wh..wh..opq")


def tar_bytes(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.info(), io.BytesIO(entry.data) if entry.kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def compress(tar: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(tar, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(tar)
    return tar


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """A layer as imaged would hand it over: compressed bytes and the ids that name them."""

    data: bytes
    diff_id: str
    chain_id: str
    parent_chain_id: str
    media_type: str


def layer(entries: Iterable[Entry], parent: str = "", compression: Compression = "gzip") -> Blob:
    tar = tar_bytes(entries)
    diff_id = digest(tar)
    return Blob(compress(tar, compression), diff_id, chain_id_of(parent, diff_id), parent,
                MEDIA_TYPES[compression])


class _PatternReader:
    """`size` incompressible bytes, produced as they are read rather than held in memory."""

    def __init__(self, size: int, seed: bytes) -> None:
        self._left = size
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        while len(self._buffer) < n:
            self._counter += 1
            self._buffer += hashlib.shake_256(self._seed + self._counter.to_bytes(8, "big")).digest(1 << 16)
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        self._left -= n
        return out


def write_big_layer(path: Path, files: int, file_size: int, compression: Compression) -> tuple[str, str]:
    """Stream a layer of `files` files of `file_size` bytes to `path`; return (diff_id, media type)."""
    sha = hashlib.sha256()
    with open(path, "wb") as raw:
        sink = _compressor(raw, compression)
        hashing = _HashingWriter(sink, sha)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(directory("data").info())
            for i in range(files):
                ti = file(f"data/f{i:06d}").info()
                ti.size = file_size
                tar.addfile(ti, _PatternReader(file_size, str(i).encode()))
        sink.close()
    return "sha256:" + sha.hexdigest(), MEDIA_TYPES[compression]


class _HashingWriter:
    def __init__(self, sink, sha) -> None:
        self._sink = sink
        self._sha = sha

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self._sink.write(data)
        return len(data)


def _compressor(raw: io.BufferedWriter, compression: Compression) -> io.RawIOBase:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)
    return _Unclosing(raw)


class _Unclosing:
    def __init__(self, raw: io.BufferedWriter) -> None:
        self._raw = raw

    def write(self, data: bytes) -> int:
        return self._raw.write(data)

    def close(self) -> None:
        self._raw.flush()


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything below root, for 'nothing changed' checks."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            yield str(path.relative_to(root)), path.lstat()
