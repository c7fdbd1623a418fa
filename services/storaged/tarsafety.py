"""Which tar entries a layer may contain, and what each one becomes on disk — pure, no I/O.

A layer is untrusted input unpacked as root, so every entry is judged here before
anything touches the disk. `LayerPaths` follows the layer's tree as it is unpacked
and turns each header into a `Step` the unpacker executes, or raises `UnsafeEntry`.

Rules (image-spec layer.md "Changesets", "Whiteouts"; where the spec is silent we
take the strictest reading that real images satisfy):
- names are relative; an absolute name, a `..` component, a NUL or an over-long
  component is refused rather than rewritten;
- nothing is ever written *through* a symlink: a parent component that this layer
  made a symlink (or any other non-directory) is refused;
- a directory is never replaced by a non-directory (the children already written
  below it would then be reachable through whatever replaced it);
- a hard link must name an earlier, non-directory entry of this same layer;
- `.wh.NAME` becomes an overlayfs whiteout, `.wh..wh..opq` an opaque directory;
  other `.wh..wh.*` names, and everything in such top-level directories, are aufs
  metadata and are skipped, as Docker does (aufs hard links into them are not kept);
- a raw 0:0 character device (overlayfs' own whiteout form) is refused: layers
  express deletions with `.wh.` names, anything else is smuggling.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import InvalidArgument

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
_NAME_MAX = 255  # bytes per component on Linux file systems
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2)
_XATTR_PREFIX = "SCHILY.xattr."
# Overlayfs interprets these itself (opaque, redirect, metacopy, origin); a layer
# setting them could change what other layers show. Only storaged writes them.
_RESERVED_XATTRS = ("trusted.overlay.", "user.overlay.")


class UnsafeEntry(InvalidArgument):
    """A layer entry that could escape the layer or corrupt the tree; the layer is refused."""


class Kind(enum.Enum):
    DIRECTORY = "directory"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR_DEVICE = "char device"
    BLOCK_DEVICE = "block device"
    FIFO = "fifo"


# ustar / GNU type flags (POSIX.1-2001 pax "typeflag"); GNU sparse files read as regular ones.
_KINDS: dict[bytes, Kind] = {
    b"0": Kind.FILE, b"\0": Kind.FILE, b"7": Kind.FILE, b"S": Kind.FILE,
    b"1": Kind.HARDLINK, b"2": Kind.SYMLINK, b"3": Kind.CHAR_DEVICE, b"4": Kind.BLOCK_DEVICE,
    b"5": Kind.DIRECTORY, b"6": Kind.FIFO,
}  # fmt: skip


def kind_of(typeflag: bytes) -> Kind:
    kind = _KINDS.get(typeflag)
    if kind is None:
        raise UnsafeEntry(f"unsupported tar entry type {typeflag!r}")
    return kind


@dataclass(frozen=True)
class Header:
    """The parts of a tar header that decide where an entry goes and whether it may."""

    name: str
    kind: Kind
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0


class Op(enum.Enum):
    CREATE = "create"  # make `path` as `kind`
    WHITEOUT = "whiteout"  # make `path` an overlayfs whiteout (char device 0:0)
    OPAQUE = "opaque"  # mark directory `path` opaque (created if missing)
    SKIP = "skip"


@dataclass(frozen=True)
class Step:
    op: Op
    path: tuple[str, ...]  # components below the layer root; () is the root itself
    kind: Kind | None = None
    # Something this layer already put at `path` (never a directory) must be unlinked first.
    replace: bool = False
    # A directory recreated over this layer's own whiteout hides the lower one's content.
    opaque: bool = False
    link: tuple[str, ...] = ()  # hard-link target


def split_name(name: str) -> tuple[str, ...]:
    """The components of an entry name; `.` and empty components dropped, the root is ()."""
    if name == "":
        raise UnsafeEntry("entry with an empty name")
    if "\0" in name:
        raise UnsafeEntry(f"entry name contains NUL: {name!r:.200}")
    if name.startswith("/"):
        raise UnsafeEntry(f"absolute entry name {name!r:.200}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeEntry(f"entry name with a '..' component: {name!r:.200}")
    for part in parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            raise UnsafeEntry(f"entry name component longer than {_NAME_MAX} bytes: {part[:60]!r}...")
    return parts


def layer_xattrs(pax_headers: Mapping[str, str]) -> dict[str, bytes]:
    """Extended attributes carried as pax `SCHILY.xattr.NAME` records (GNU tar, Go archive/tar)."""
    out: dict[str, bytes] = {}
    for key, value in pax_headers.items():
        if not key.startswith(_XATTR_PREFIX):
            continue
        name = key[len(_XATTR_PREFIX):]
        if not name or "\0" in name:
            raise UnsafeEntry(f"malformed xattr name {name!r:.100}")
        if name.startswith(_RESERVED_XATTRS):
            raise UnsafeEntry(f"layer sets overlayfs' own xattr {name!r}")
        # tarfile decodes pax values as UTF-8 with surrogateescape; this restores the bytes.
        out[name] = value.encode("utf-8", "surrogateescape")
    return out


class _Node(enum.Enum):
    """What this layer has put at a path so far."""

    DIRECTORY = "a directory"
    SYMLINK = "a symlink"
    OTHER = "a non-directory"
    WHITEOUT = "a whiteout"


def _node_of(kind: Kind) -> _Node:
    if kind is Kind.DIRECTORY:
        return _Node.DIRECTORY
    if kind is Kind.SYMLINK:
        return _Node.SYMLINK
    return _Node.OTHER


class LayerPaths:
    """The tree one layer has written so far; `plan` judges the next entry against it."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, ...], _Node] = {(): _Node.DIRECTORY}

    def plan(self, header: Header) -> Step:
        path = split_name(header.name)
        if path and path[0].startswith(WHITEOUT_META_PREFIX) and path != (OPAQUE_MARKER,):
            return Step(Op.SKIP, path)  # aufs' top-level metadata dirs (.wh..wh.plnk, .wh..wh.aufs)
        if path and path[-1].startswith(WHITEOUT_PREFIX):
            return self._plan_whiteout(path)
        self._check_parents(path)
        self._check_ids(header)
        if header.kind is Kind.HARDLINK:
            return self._plan_hardlink(path, header)
        if header.kind is Kind.SYMLINK and (header.linkname == "" or "\0" in header.linkname):
            raise UnsafeEntry(f"{header.name!r}: symlink with an empty or NUL-bearing target")
        if header.kind is Kind.CHAR_DEVICE and header.devmajor == 0 and header.devminor == 0:
            raise UnsafeEntry(f"{header.name!r}: raw 0:0 character device (whiteouts must be .wh. names)")
        if path == () and header.kind is not Kind.DIRECTORY:
            raise UnsafeEntry(f"the layer root entry {header.name!r} is a {header.kind.value}")
        existing = self._nodes.get(path)
        self._check_not_replacing_directory(path, existing, header.kind)
        self._nodes[path] = _node_of(header.kind)
        return Step(Op.CREATE, path, header.kind,
                    replace=existing is not None and existing is not _Node.DIRECTORY,
                    opaque=existing is _Node.WHITEOUT and header.kind is Kind.DIRECTORY)

    def _plan_hardlink(self, path: tuple[str, ...], header: Header) -> Step:
        target = split_name(header.linkname)
        node = self._nodes.get(target)
        if node is None or node is _Node.WHITEOUT:
            raise UnsafeEntry(f"{header.name!r}: hard link to {header.linkname!r}, "
                              "which is not an earlier entry of this layer")
        if node is _Node.DIRECTORY:
            raise UnsafeEntry(f"{header.name!r}: hard link to a directory")
        if target == path:
            raise UnsafeEntry(f"{header.name!r}: hard link to itself")
        existing = self._nodes.get(path)
        self._check_not_replacing_directory(path, existing, Kind.HARDLINK)
        self._nodes[path] = node
        return Step(Op.CREATE, path, Kind.HARDLINK, replace=existing is not None, link=target)

    def _plan_whiteout(self, path: tuple[str, ...]) -> Step:
        self._check_parents(path)
        base = path[-1]
        if base == OPAQUE_MARKER:
            return Step(Op.OPAQUE, path[:-1])
        if base.startswith(WHITEOUT_META_PREFIX):
            return Step(Op.SKIP, path)
        target = (*path[:-1], base[len(WHITEOUT_PREFIX):])
        if target[-1] in ("", ".", ".."):
            raise UnsafeEntry(f"whiteout {'/'.join(path)!r} names no file")
        existing = self._nodes.get(target)
        # A whiteout only removes lower layers' files (layer.md "Whiteouts"): what this
        # layer put there stays, and a directory of its own merely stops merging.
        if existing is _Node.DIRECTORY:
            return Step(Op.OPAQUE, target)
        if existing is not None:
            return Step(Op.SKIP, target)
        self._nodes[target] = _Node.WHITEOUT
        return Step(Op.WHITEOUT, target)

    def _check_parents(self, path: tuple[str, ...]) -> None:
        for depth in range(1, len(path)):
            parent = path[:depth]
            if parent[-1].startswith(WHITEOUT_PREFIX):
                raise UnsafeEntry(f"{'/'.join(path)!r}: whiteout name {parent[-1]!r} used as a directory")
            node = self._nodes.get(parent)
            if node is None:
                # Created on the way, as tar does; the unpacker gives it mode 0755.
                self._nodes[parent] = _Node.DIRECTORY
            elif node is not _Node.DIRECTORY:
                raise UnsafeEntry(f"{'/'.join(path)!r}: would be written through {'/'.join(parent)!r}, "
                                  f"which this layer made {node.value}")

    def _check_not_replacing_directory(self, path: tuple[str, ...], existing: _Node | None,
                                       kind: Kind) -> None:
        if existing is _Node.DIRECTORY and kind is not Kind.DIRECTORY:
            raise UnsafeEntry(f"{'/'.join(path)!r}: a {kind.value} would replace a directory")

    @staticmethod
    def _check_ids(header: Header) -> None:
        for what, value in (("uid", header.uid), ("gid", header.gid)):
            if not 0 <= value <= _ID_MAX:
                raise UnsafeEntry(f"{header.name!r}: {what} {value} out of range")
