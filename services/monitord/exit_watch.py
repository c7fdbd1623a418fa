"""inotify on conmon's exit directory: the one place container exits are learnt from.

conmon writes `<exit dir>/<container id>` (through a temp file and a rename) when the
container's init ends. Watching IN_MOVED_TO and IN_CLOSE_WRITE catches both that rename and
a plain write; the loop is woken by the inotify fd (`add_reader`), never by polling.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from shared.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, IN_Q_OVERFLOW, parse_events, watching


class ExitDirWatch:
    """Names of files written into one directory, in the order inotify reports them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1
        self._names: asyncio.Queue[str] = asyncio.Queue()

    def start(self) -> None:
        """Arm the watch; files written from now on are reported (scan what is there already yourself)."""
        self._fd = watching(self.directory, IN_CLOSE_WRITE | IN_MOVED_TO)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

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

