"""Reading and writing a non-blocking descriptor (a pty master, a pipe) from an event loop."""

from __future__ import annotations

import asyncio
import errno
import os


async def read_fd(fd: int, size: int = 65536) -> bytes:
    """Bytes from a non-blocking fd; b"" at its end (EIO is how a pty master says the slave is gone)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise
        ready = loop.create_future()
        loop.add_reader(fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def write_fd(fd: int, data: bytes) -> None:
    """All of `data` into a non-blocking fd, waiting for room as needed."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
            continue
        except BlockingIOError:
            pass
        ready = loop.create_future()
        loop.add_writer(fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(fd)
