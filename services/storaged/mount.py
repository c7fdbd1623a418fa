"""mount(2), umount2(2) and syncfs(2) through libc: no `mount` process on the hot path."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2

MNT_DETACH = 2
# The kernel copies at most one page of mount options (fs/namespace.c copy_mount_options).
OPTIONS_MAX = os.sysconf("SC_PAGE_SIZE") - 1
# Characters overlayfs' option parser would split on or unescape.
_SPECIAL = re.compile(r"[,:\\=\s]")


def _check(result: int, what: str, path: str | Path) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", str(path))


def syncfs(fd: int) -> None:
    """Flush the whole file system of `fd`: one call instead of an fsync per unpacked file."""
    _check(_libc.syncfs(fd), "syncfs", f"fd {fd}")


def start_writeback(fd: int) -> None:
    """Start writing `fd`'s dirty pages out without waiting (sync_file_range(2) SYNC_FILE_RANGE_WRITE)."""
    _check(_libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE), "sync_file_range", f"fd {fd}")


def overlay_options(lowers: Sequence[str], upper: str, work: str) -> str:
    """Options for an overlay whose lowers are listed top first (overlayfs.rst "Multiple lower layers")."""
    return f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},index=off"


@contextlib.contextmanager
def _fd_paths(paths: Sequence[Path]) -> Iterator[list[str]]:
    """`/proc/self/fd/N` names for `paths`, valid while the context is open.

    These are how a deep stack fits in one page without chdir (which would move
    every thread of the daemon): ~18 bytes per layer instead of ~100, so a few
    hundred layers fit, beyond overlayfs' own limit of 500 lowers only in theory.
    """
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        yield [f"/proc/self/fd/{fd}" for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)


def mount_overlay(target: Path, lowers: Sequence[Path], upper: Path, work: Path) -> None:
    """Mount an overlay at `target`; lowers top first."""
    plain = [str(p) for p in (*lowers, upper, work)]
    options = overlay_options(plain[:-2], plain[-2], plain[-1])
    if len(options) <= OPTIONS_MAX and not any(_SPECIAL.search(p) for p in plain):
        _mount(target, options)
        return
    with _fd_paths([*lowers, upper, work]) as short:
        options = overlay_options(short[:-2], short[-2], short[-1])
        if len(options) > OPTIONS_MAX:
            raise OSError(errno.E2BIG, f"{len(lowers)} layers do not fit in one overlay mount", str(target))
        _mount(target, options)


def _mount(target: Path, options: str) -> None:
    _check(_libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, options.encode()), "mount overlay",
           target)


def unmount(target: Path) -> None:
    """Unmount `target` if mounted; when busy, detach it lazily so the caller can go on."""
    while is_mountpoint(target):
        if _libc.umount2(os.fsencode(target), 0) == 0:
            continue
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return  # raced with another unmount
        if err != errno.EBUSY:
            raise OSError(err, f"umount: {os.strerror(err)}", str(target))
        log.warning("%s is busy; detaching it lazily", target)
        _check(_libc.umount2(os.fsencode(target), MNT_DETACH), "umount (lazy)", target)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (proc(5)).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountpoints() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return {_unescape(line.split(" ", 5)[4]) for line in f}


def is_mountpoint(path: Path) -> bool:
    return os.path.realpath(path) in mountpoints()
