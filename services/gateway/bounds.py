"""How many slow calls of one kind the gateway lets through to a daemon at once.

A daemon runs at most `transport.workers` requests at once and leaves the rest waiting in
nng. Without a bound, a flood of one slow kind (pulls to imaged, ExecSync probes to
monitord) could hold every worker, and the quick calls a pod start needs (imaged's image
lookup, monitord's create and start) would queue behind it. Bounded kinds wait here for a
slot, within their deadline, never failing early; lifecycle calls are never bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.config import GatewayConfig
from shared.errors import DeadlineExceeded


class CallBound:
    """At most `limit` calls of `kind` at once; the others wait for a slot in arrival order."""

    def __init__(self, kind: str, limit: int) -> None:
        self.kind = kind
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._waiting = 0
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return self._waiting

    @asynccontextmanager
    async def slot(self, timeout: float) -> AsyncIterator[float]:
        """Hold one slot; yields what is left of `timeout` for the call itself."""
        started = time.monotonic()
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self.kind}: waited {timeout:g}s for one of {self.limit} slots (all in use)") from None
        finally:
            self._waiting -= 1
        self._in_use += 1
        try:
            yield max(timeout - (time.monotonic() - started), 0.001)
        finally:
            self._in_use -= 1
            self._slots.release()


class CallBounds:
    """The gateway's bounded kinds of call, sized from `[gateway]`."""

    def __init__(self, config: GatewayConfig) -> None:
        self.pulls = CallBound("PullImage", config.max_concurrent_pulls)
        self.exec_sync = CallBound("ExecSync", config.max_concurrent_exec_sync)
