"""Reading a layer blob for an unpack: a complete file, or one imaged is still downloading.

A growing blob lets a layer unpack while it downloads, so a pull costs about the longer of
the two instead of their sum. imaged appends to `incoming/<partial>` and, once the whole
blob hashed to its digest, hard-links it as `incoming/<verified>`. The reader follows the
partial file up to the manifest's size, waking on inotify rather than polling; the unpack
then waits in `wait_verified` for the link to the same inode before anything is committed.
So nothing unverified ever becomes a layer, and the diff_id check after decompression
stays the proof of the content, as for a complete blob.

A streamed unpack never gives the final verdict on a layer: imaged may still restart the
download from its start (a registry that ignores Range, kept bytes that did not verify)
or give it up, and then refuses to vouch for what was read. Every failure here is Aborted,
and imaged applies the verified blob the classic way when its download succeeded.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Aborted
from shared.inotify import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_MODIFY,
    IN_MOVED_TO,
    drain,
    wait_readable,
    watching,
)

# How long a growing blob may go without a new byte (or imaged without a verdict) before the
# streamed unpack gives up. imaged's own download retries a stalled connection well within it;
# giving up only costs the overlap, since imaged then applies the complete blob.
STALL_SECONDS = 60.0
_WAKE_SECONDS = 0.2  # how often a waiting reader looks at the stop flags between inotify events
_EVENTS = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_TO


@dataclass(frozen=True)
class Follow:
    """Where a growing blob ends and how imaged says it verified."""

    directory: Path
    size: int  # the blob's size from the manifest
    verified: str  # the name imaged links the blob under once it verified


class BlobReader(io.RawIOBase):
    """The blob's bytes from the start; with `follow`, reads wait for bytes still to come."""

    def __init__(self, fd: int, follow: Follow | None, cancel: threading.Event,
                 stall_s: float = STALL_SECONDS, path: Path | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._path = path
        self._follow = follow
        self._cancel = cancel
        self._abandoned = threading.Event()
        self._stall_s = stall_s
        self._offset = 0
        self._size = follow.size if follow is not None else os.fstat(fd).st_size
        # Watched before the first read: a write after any read we make is then always an event.
        self._watch = watching(follow.directory, _EVENTS) if follow is not None else -1

    @classmethod
    def open(cls, path: Path, follow: Follow | None, cancel: threading.Event) -> BlobReader:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(0, "not a regular file")
            return cls(fd, follow, cancel, path=path)
        except BaseException:
            os.close(fd)
            raise

    @property
    def streaming(self) -> bool:
        return self._follow is not None

    def abandon(self) -> None:
        """Make a waiting read (or `wait_verified`) give up now: nobody wants the result any more."""
        self._abandoned.set()

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def magic(self, n: int) -> bytes:
        """The first `n` bytes (fewer only if the blob is shorter), without moving the read offset."""
        want = min(n, self._size)
        self._await(lambda: os.fstat(self._fd).st_size >= want)
        return os.pread(self._fd, want, 0)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        room = min(len(view), self._size - self._offset)
        if room <= 0:
            return 0
        while True:
            n = os.preadv(self._fd, [view[:room]], self._offset)
            if n:
                self._offset += n
                return n
            if self._follow is None:
                return 0  # the file is shorter than it was: the diff_id check refuses the layer
            self._await_growth()

    def wait_verified(self) -> None:
        """Return once imaged has linked this very file as verified; Aborted if it never does."""
        if self._follow is None:
            return
        link = self._follow.directory / self._follow.verified
        mine = os.fstat(self._fd)

        def linked() -> bool:
            try:
                found = os.stat(link, follow_symlinks=False)
            except FileNotFoundError:
                if os.fstat(self._fd).st_nlink == 0:
                    raise Aborted("imaged dropped the download instead of verifying it") from None
                return False
            if (found.st_dev, found.st_ino) != (mine.st_dev, mine.st_ino):
                raise Aborted(f"{self._follow.verified} is not the file that was read")
            return True

        self._await(linked)

    def consume(self) -> None:
        """Delete the blob and close it, once its layer is unpacked and verified.

        Before the unpack's syncfs: a file with no name and no open descriptor has its dirty
        pages dropped, not written, so the flush writes the layer and not the blob too.
        """
        name = self._follow.directory / self._follow.verified if self._follow is not None else self._path
        if name is not None:
            name.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            if self._watch >= 0:
                os.close(self._watch)
        super().close()

    def _await_growth(self) -> None:
        def grown() -> bool:
            info = os.fstat(self._fd)
            if info.st_size > self._offset:
                return True
            if info.st_size < self._offset:
                raise Aborted("the download started over while it was being unpacked")
            if info.st_nlink == 0:
                raise Aborted("imaged gave up the download while it was being unpacked")
            return False

        self._await(grown)

    def _await(self, ready: Callable[[], bool]) -> None:
        """Wait until `ready()` is true, woken by inotify; Aborted on stop, abandon or a stall."""
        deadline = time.monotonic() + self._stall_s
        while not ready():
            if self._cancel.is_set():
                raise Aborted("storaged is stopping")
            if self._abandoned.is_set():
                raise Aborted("the apply was cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Aborted(f"the download made no progress for {self._stall_s:g}s")
            if self._watch >= 0 and wait_readable(self._watch, min(remaining, _WAKE_SECONDS)):
                drain(self._watch)
