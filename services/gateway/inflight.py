"""The IDs the gateway is creating or removing right now, so the reconciler leaves them alone.

A create touches several daemons one after the other (storaged mounts a rootfs before
monitord records the container); until it finishes, what it made looks like an orphan.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator


class Inflight:
    def __init__(self) -> None:
        self._ids: collections.Counter[str] = collections.Counter()
        self._watchers: list[set[str]] = []

    @contextlib.contextmanager
    def hold(self, *ids: str) -> Iterator[None]:
        self._ids.update(ids)
        for seen in self._watchers:
            seen.update(ids)
        try:
            yield
        finally:
            self._ids.subtract(ids)
            self._ids += collections.Counter()  # drops the zero counts

    @contextlib.contextmanager
    def watch(self) -> Iterator[set[str]]:
        """Every ID in flight at the start or at any moment until the end of the block."""
        seen = set(self._ids)
        self._watchers.append(seen)
        try:
            yield seen
        finally:
            self._watchers.remove(seen)

    def __contains__(self, id_: str) -> bool:
        return self._ids[id_] > 0
