"""inotify on conmon's exit directory: the one place container exits are learnt from.

conmon writes `<exit dir>/<container id>` (through a temp file and a rename) when the
container's init ends. Watching IN_MOVED_TO and IN_CLOSE_WRITE catches both that rename and
a plain write; the loop is woken by the inotify fd (`add_reader`), never by polling.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class ExitDirWatch:
    """Names of files written into one directory, in the order inotify reports them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1
        self._names: asyncio.Queue[str] = asyncio.Queue()

    def start(self) -> None:
        """Arm the watch; files written from now on are reported (scan what is there already yourself)."""
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        if _libc.inotify_add_watch(fd, os.fsencode(self.directory), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {self.directory}: {os.strerror(err)}")
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    async def next_name(self) -> str:
        return await self._names.get()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        for name, mask in parse_events(data):
            if mask & IN_Q_OVERFLOW:
                # Events were lost: every file present may be news.
                for entry in os.listdir(self.directory):
                    self._names.put_nowait(entry)
            elif name:
                self._names.put_nowait(name)


def parse_events(data: bytes) -> list[tuple[str, int]]:
    events = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        raw = data[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        events.append((os.fsdecode(raw), mask))
    return events
