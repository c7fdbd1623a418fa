"""One asyncio lock per record ID: transitions of one container (or pod) happen one at a time."""

from __future__ import annotations

import asyncio


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def __call__(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def forget(self, key: str) -> None:
        """Drop the lock of a removed record, unless someone is still queued on it."""
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
