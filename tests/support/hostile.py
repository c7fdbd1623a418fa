"""Hostile layer tars: each one tries to write ``PAYLOAD`` into a canary file on the host.

The canary lives *outside* the directory the layer is unpacked into, in the test's tmp
dir, so a failing extractor damages only the test's own files. Usage::

    canary = plant_canary(tmp_path / "outside")
    before = snapshot(canary.parent)
    tar = HOSTILE_LAYERS["symlinked_parent_dir"](canary)
    ...unpack tar into tmp_path / "rootfs" with the code under test...
    assert snapshot(canary.parent) == before

``snapshot`` records content, mode and link count, so it also catches a hardlink made
*to* the canary from inside the rootfs (its nlink goes up) even if nothing was written.

Escapes through ``..`` use ``DOTDOT`` (64 levels) followed by the canary's absolute
path: ``..`` stops at ``/``, so this reaches the canary from any unpack dir up to 64 deep
without the builder having to know where the layer will be unpacked.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

from tests.support.layers import FIXED_MTIME, TarBuilder

PAYLOAD = b"pwned by a hostile layer\n"
CANARY_CONTENT = b"canary: the host file no layer may touch\n"
DOTDOT = "../" * 64


def plant_canary(directory: Path) -> Path:
    """Create ``directory/canary`` with CANARY_CONTENT; keep ``directory`` out of the rootfs."""
    directory.mkdir(parents=True, exist_ok=True)
    canary = directory / "canary"
    canary.write_bytes(CANARY_CONTENT)
    return canary


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``directory``: (mode, nlink, content or symlink target)."""
    state: dict[str, tuple[int, int, bytes]] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path).encode()
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes()
            else:
                content = b""
            state[str(path.relative_to(directory))] = (info.st_mode, info.st_nlink, content)
    return state


def _escape(path: Path) -> str:
    return DOTDOT + str(path).lstrip("/")


def _raw(name: str, kind: bytes, *, linkname: str = "") -> tarfile.TarInfo:
    """A header written exactly as named: TarBuilder.entry does no cleaning."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o777 if kind == tarfile.SYMTYPE else 0o644
    info.mtime = FIXED_MTIME
    info.linkname = linkname
    return info


def dotdot_traversal(canary: Path) -> bytes:
    """A regular file named ``etc/../../…/<canary>``.

    Starts with a harmless ``etc/`` so a check that only looks at the first component
    (or only at a leading ``..``) misses it.
    """
    builder = TarBuilder().dir("etc")
    return builder.entry(_raw("etc/" + _escape(canary), tarfile.REGTYPE), PAYLOAD).build()


def absolute_path(canary: Path) -> bytes:
    """A regular file whose name is the canary's absolute path."""
    return TarBuilder().entry(_raw(str(canary), tarfile.REGTYPE), PAYLOAD).build()


def symlink_write_through(canary: Path) -> bytes:
    """``etc/evil -> /abs/canary``, then a regular file ``etc/evil``.

    An extractor that opens ``etc/evil`` for writing without first removing the symlink
    (or without O_NOFOLLOW) writes the canary.
    """
    builder = TarBuilder().dir("etc").symlink("etc/evil", str(canary))
    return builder.entry(_raw("etc/evil", tarfile.REGTYPE), PAYLOAD).build()


def relative_symlink_write_through(canary: Path) -> bytes:
    """As ``symlink_write_through`` with ``etc/evil -> ../../…/canary``."""
    builder = TarBuilder().dir("etc").symlink("etc/evil", _escape(canary))
    return builder.entry(_raw("etc/evil", tarfile.REGTYPE), PAYLOAD).build()


def symlinked_parent_dir(canary: Path) -> bytes:
    """``escape -> /abs/canary/dir``, then a file ``escape/canary``: the parent is the link."""
    builder = TarBuilder().symlink("escape", str(canary.parent))
    return builder.entry(_raw(f"escape/{canary.name}", tarfile.REGTYPE), PAYLOAD).build()


def relative_symlinked_parent_dir(canary: Path) -> bytes:
    """As ``symlinked_parent_dir`` with a relative ``../../…`` link."""
    builder = TarBuilder().symlink("escape", _escape(canary.parent))
    return builder.entry(_raw(f"escape/{canary.name}", tarfile.REGTYPE), PAYLOAD).build()


def symlink_chain(canary: Path) -> bytes:
    """``a -> b``, ``b -> ../../…/canary-dir``: each link alone looks local-ish; ``a/canary`` escapes."""
    builder = TarBuilder().symlink("a", "b").symlink("b", _escape(canary.parent))
    return builder.entry(_raw(f"a/{canary.name}", tarfile.REGTYPE), PAYLOAD).build()


def hardlink_to_outside(canary: Path) -> bytes:
    """Hardlink ``etc/passwd-copy`` -> the canary's absolute path (think ``/etc/passwd``).

    Then a regular file of the same name: an extractor that made the link and then
    opens the existing file with O_TRUNC rewrites the host file. Even without the
    write, a link to a host file inside a rootfs is an escape (canary nlink rises).
    """
    builder = TarBuilder().dir("etc")
    builder.entry(_raw("etc/passwd-copy", tarfile.LNKTYPE, linkname=str(canary)))
    return builder.entry(_raw("etc/passwd-copy", tarfile.REGTYPE), PAYLOAD).build()


def hardlink_dotdot_to_outside(canary: Path) -> bytes:
    """As ``hardlink_to_outside`` with a ``../../…`` link name."""
    builder = TarBuilder().dir("etc")
    builder.entry(_raw("etc/passwd-copy", tarfile.LNKTYPE, linkname=_escape(canary)))
    return builder.entry(_raw("etc/passwd-copy", tarfile.REGTYPE), PAYLOAD).build()


def hardlink_forward_reference(canary: Path) -> bytes:
    """Hardlink ``etc/early`` -> ``etc/later`` before ``etc/later`` exists; ``etc/later``
    then arrives as a symlink to the canary, and ``etc/early`` is written.

    A hardlink must name an entry already extracted. Extractors that defer or retry the
    link end up linking to the symlink's target (``os.link`` follows symlinks by default).
    """
    builder = TarBuilder().dir("etc")
    builder.entry(_raw("etc/early", tarfile.LNKTYPE, linkname="etc/later"))
    builder.symlink("etc/later", str(canary))
    return builder.entry(_raw("etc/early", tarfile.REGTYPE), PAYLOAD).build()


def dir_replaced_by_symlink(canary: Path) -> bytes:
    """Directory ``data/`` with a file, then ``data`` -> the canary's dir, then ``data/canary``.

    The tar replaces a directory it created itself by a symlink; whatever checked
    ``data/`` earlier is stale when ``data/canary`` is written.
    """
    builder = TarBuilder().dir("data").file("data/ok", b"ok\n")
    builder.entry(_raw("data", tarfile.SYMTYPE, linkname=str(canary.parent)))
    return builder.entry(_raw(f"data/{canary.name}", tarfile.REGTYPE), PAYLOAD).build()


def nul_in_name(canary: Path) -> bytes:
    """A name with an embedded NUL after a traversal to the canary.

    The name is long enough to travel in a PAX ``path`` record, where a NUL survives
    (in a ustar header it would just end the string). C code would truncate it at the
    NUL and write the canary; Python's os calls raise ValueError, which an extractor
    must turn into a rejected layer, not a crashed daemon.
    """
    return TarBuilder().entry(_raw(_escape(canary) + "\x00.txt", tarfile.REGTYPE), PAYLOAD).build()


HOSTILE_LAYERS: dict[str, Callable[[Path], bytes]] = {
    "dotdot_traversal": dotdot_traversal,
    "absolute_path": absolute_path,
    "symlink_write_through": symlink_write_through,
    "relative_symlink_write_through": relative_symlink_write_through,
    "symlinked_parent_dir": symlinked_parent_dir,
    "relative_symlinked_parent_dir": relative_symlinked_parent_dir,
    "symlink_chain": symlink_chain,
    "hardlink_to_outside": hardlink_to_outside,
    "hardlink_dotdot_to_outside": hardlink_dotdot_to_outside,
    "hardlink_forward_reference": hardlink_forward_reference,
    "dir_replaced_by_symlink": dir_replaced_by_symlink,
    "nul_in_name": nul_in_name,
}
