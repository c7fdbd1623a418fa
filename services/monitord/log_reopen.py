"""Asking conmon to reopen a container's log (after the kubelet rotated it)."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from pathlib import Path

from shared.errors import FailedPrecondition, Internal

# conmon's ctl FIFO takes "TYPE HEIGHT WIDTH" lines; type 2 = reopen the log.
_REOPEN = b"2 0 0\n"
_POLL = 0.01


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


async def reopen_log(container_id: str, bundle: Path, log_path: str, timeout: float = 2.0) -> None:
    before = _inode(log_path)
    try:
        fd = os.open(bundle / "ctl", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENOENT):  # no reader: conmon is gone
            raise FailedPrecondition(f"container {container_id} has no running conmon to reopen its log") from None
        raise
    try:
        os.write(fd, _REOPEN)
    finally:
        os.close(fd)
    # conmon reopens by writing <log>.tmp and renaming it over the log: a new inode at the path.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _inode(log_path)
        if now is not None and now != before:
            return
        await asyncio.sleep(_POLL)
    raise Internal(f"conmon did not reopen {log_path} within {timeout:g}s")
