"""Pod starts in flight, as the pulls see them: bulk pull work steps aside while a pod starts.

On two busy cores, a pull storm (downloads, hashing, unpacking, their writeback) slows every
step of a pod start: runc, overlay mounts, fsyncs and wake-ups all wait behind it. CPU weights
do not remove that (bench/RESULTS.md "Pull storm"). So the gateway counts the RunPodSandbox,
CreateContainer and StartContainer calls it is serving, and imaged's downloads and storaged's
unpacks pause between two chunks while that count is above zero, each pause at most
`gateway.pulls_yield_ms`. A pod start is tens of milliseconds; a pull only loses the time
pods were actually starting.

The count lives in a 24-byte file under the run dir (tmpfs), mapped by every process: the
gateway writes it from its one event loop thread, the others only read it, a read costs
well under a microsecond, and no message or event can be lost. Beside the count the gateway
writes the monotonic time of its last change and its pid: a count that has not changed for
`_RECHECK_NS` counts only while that gateway is alive, so one left behind by a gateway
killed mid-call never keeps pulls paused, and a slow pod start still holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_LAYOUT = struct.Struct("qqq")  # count, time.monotonic_ns() of the last change, the gateway's pid
_RECHECK_NS = 2_000_000_000  # past this, an unchanged count is believed only while its gateway lives
_POLL_S = 0.002
_REOPEN_NS = 1_000_000_000  # how often a reader looks again for a file the gateway has not made yet


def pod_starts_path(run_dir: str) -> Path:
    return Path(run_dir) / "pod-starts"


def _map(path: Path, writer: bool) -> mmap.mmap:
    flags = os.O_RDWR | os.O_CREAT if writer else os.O_RDONLY
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < _LAYOUT.size:
            if not writer:
                raise FileNotFoundError(path)  # the gateway is making it right now
            os.ftruncate(fd, _LAYOUT.size)
        return mmap.mmap(fd, _LAYOUT.size, access=mmap.ACCESS_WRITE if writer else mmap.ACCESS_READ)
    finally:
        os.close(fd)


class PodStarts:
    """The gateway's side: counts the pod-start calls in flight."""

    def __init__(self, run_dir: str) -> None:
        self._count = 0
        self._map: mmap.mmap | None = None
        try:
            # The file is kept, not replaced, across gateway restarts: readers hold it mapped.
            self._map = _map(pod_starts_path(run_dir), writer=True)
        except OSError as exc:
            log.warning("pulls will not yield to pod starts: %s", exc)
        self._write()

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        self._count += 1
        self._write()
        try:
            yield
        finally:
            self._count -= 1
            self._write()

    def close(self) -> None:
        self._count = 0
        self._write()
        if self._map is not None:
            self._map.close()
            self._map = None

    def _write(self) -> None:
        if self._map is not None:
            _LAYOUT.pack_into(self._map, 0, self._count, time.monotonic_ns(), os.getpid())


class PodStartSignal:
    """imaged's and storaged's side: pause bulk pull work while pods start (at most `limit_s` a pause)."""

    def __init__(self, run_dir: str, limit_ms: int) -> None:
        self._path = pod_starts_path(run_dir)
        self._limit_s = limit_ms / 1000
        self._map: mmap.mmap | None = None
        self._next_open_ns = 0

    def busy(self) -> bool:
        if self._limit_s <= 0:
            return False
        if self._map is None and not self._open():
            return False
        assert self._map is not None
        count, changed_ns, pid = _LAYOUT.unpack_from(self._map, 0)
        if count <= 0:
            return False
        return time.monotonic_ns() - changed_ns < _RECHECK_NS or _alive(pid)

    def pause(self) -> None:
        """In a worker thread: wait while pods start, at most the limit."""
        if not self.busy():
            return
        deadline = time.monotonic() + self._limit_s
        while self.busy() and time.monotonic() < deadline:
            time.sleep(_POLL_S)

    async def pause_async(self) -> None:
        """On an event loop: the same, without blocking it."""
        if not self.busy():
            return
        deadline = time.monotonic() + self._limit_s
        while self.busy() and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)

    def _open(self) -> bool:
        now = time.monotonic_ns()
        if now < self._next_open_ns:
            return False
        self._next_open_ns = now + _REOPEN_NS
        try:
            self._map = _map(self._path, writer=False)
        except (FileNotFoundError, ValueError):
            return False
        return True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
