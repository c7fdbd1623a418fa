"""Concurrency primitives of the pull path: shared in-flight work and the resync gate.

`SharedTasks` lets concurrent pulls share one download (or one layer apply):
the first caller starts the work, later callers with the same key join it, and
the work is cancelled only when every caller has gone (a pull that hits its
deadline does not abort a download another pull still waits for). Progress is
fanned out to every caller, late joiners first catching up on bytes so far.

`SyncGate` keeps storaged's resync (which drops references imaged does not list)
from running while a pull has layers in storaged that no record names yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")
Listener = Callable[[int], None]


class Fanout:
    """Byte-count progress of one shared task, delivered to every current listener."""

    def __init__(self) -> None:
        self.done = 0
        self.listeners: list[Listener] = []

    def __call__(self, delta: int) -> None:
        self.done += delta
        for listener in self.listeners:
            listener(delta)

    def add(self, listener: Listener) -> None:
        if self.done:
            listener(self.done)
        self.listeners.append(listener)

    def remove(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(listener)


@dataclass
class _Entry(Generic[V]):
    task: asyncio.Task[V]
    fanout: Fanout
    users: int = 0


@dataclass
class SharedTasks(Generic[K, V]):
    """Work keyed by K, shared by concurrent callers.

    `release(value)` runs once the last caller of a successful task has taken its
    share, e.g. to delete the file that every caller has hard-linked by then.
    """

    release: Callable[[V], None] | None = None
    _entries: dict[K, _Entry[V]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    async def run(self, key: K, start: Callable[[Fanout], Awaitable[V]], take: Callable[[V], T],
                  listener: Listener | None = None) -> T:
        entry = self._entries.get(key)
        if entry is None:
            fanout = Fanout()
            entry = _Entry(asyncio.create_task(start(fanout)), fanout)
            self._entries[key] = entry
            entry.task.add_done_callback(lambda t, k=key, e=entry: self._settled(k, e))
        return await self._wait(key, entry, listener, take)

    async def join(self, key: K) -> bool:
        """Wait, as one more user, for the work on `key` if any is in flight; False if none is."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        await self._wait(key, entry, None, lambda _: None)
        return True

    async def _wait(self, key: K, entry: _Entry[V], listener: Listener | None, take: Callable[[V], T]) -> T:
        entry.users += 1
        if listener is not None:
            entry.fanout.add(listener)
        try:
            # `take` runs while this caller still counts: `release` may only follow the last take.
            return take(await asyncio.shield(entry.task))
        finally:
            if listener is not None:
                entry.fanout.remove(listener)
            entry.users -= 1
            if entry.users == 0:
                self._last_user_left(key, entry)

    def _settled(self, key: K, entry: _Entry[V]) -> None:
        # A failed task is forgotten at once, so the next caller starts afresh rather
        # than inheriting an error; its exception is consumed by the callers waiting.
        failed = entry.task.cancelled() or entry.task.exception() is not None
        if failed and self._entries.get(key) is entry:
            del self._entries[key]

    def _last_user_left(self, key: K, entry: _Entry[V]) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]
        if not entry.task.done():
            entry.task.cancel()
        elif not entry.task.cancelled() and entry.task.exception() is None and self.release is not None:
            try:
                self.release(entry.task.result())
            except Exception:
                log.exception("releasing shared work %r failed", key)

    def cancel_all(self) -> None:
        for entry in self._entries.values():
            entry.task.cancel()
        self._entries.clear()


class SyncGate:
    """Readers (pulls, removals) share the gate; the resync takes it alone.

    Readers are preferred: a resync is housekeeping and may wait, a pull may not
    queue behind it for the length of another, long, pull.
    """

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._writer:
            await self._wait()
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while self._writer or self._readers:
            await self._wait()
        self._writer = True
        try:
            yield
        finally:
            self._writer = False
            self._notify()


