"""inotify(7) through libc: the calls and event layout every watcher in criplex uses.

The standard library has no inotify; ctypes reaches the two calls. A watcher owns the
descriptor (non-blocking, close-on-exec) and reads it either from an event loop
(`add_reader`) or from a worker thread (`wait_readable`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


def inotify_open() -> int:
    """A new non-blocking, close-on-exec inotify descriptor with no watch yet."""
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    return fd


def add_watch(fd: int, path: Path, mask: int) -> None:
    """Watch `path` (again: re-adding follows a directory that was replaced); OSError if it cannot be."""
    if _libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")


def watching(path: Path, mask: int) -> int:
    """A descriptor already watching `path`."""
    fd = inotify_open()
    try:
        add_watch(fd, path, mask)
    except BaseException:
        os.close(fd)
        raise
    return fd


def drain(fd: int) -> bytes:
    """Everything queued on `fd` now (b"" when nothing is)."""
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def wait_readable(fd: int, timeout_s: float) -> bool:
    """Block the calling (worker) thread until `fd` has events or `timeout_s` passes."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def parse_events(data: bytes) -> list[tuple[str, int]]:
    """(name, mask) of each event in `data`; the name is "" for events on the watched path itself."""
    events = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        raw = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append((os.fsdecode(raw), mask))
    return events
