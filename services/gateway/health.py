"""The gateway's live picture of its daemons, so Status never waits on them.

Connection state comes from nng pipe events (instant); each daemon's own
readiness comes from a `health` call made in the background every few seconds
and at once whenever a daemon (re)connects or announces its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from shared.config import Config
from shared.errors import CriplexError
from shared.schema.common import HEALTH, STARTED_TOPIC, Health, HealthRequest, Started
from shared.transport import DaemonClient, EventSubscriber
from shared.wire import parse

log = logging.getLogger(__name__)

_POLL_S = 2.0
_HEALTH_TIMEOUT_S = 1.0
# A connected daemon that misses a health answer keeps its last one this long: a loop busy
# starting 64 processes is slow, not broken, and must not turn the node NotReady. A lost
# connection still counts at once.
_STALE_AFTER_S = 15.0


@dataclass(frozen=True)
class DaemonState:
    service: str
    connected: bool
    health: Health | None
    checked_at: float
    error: str = ""
    starts_seen: int = 0  # start announcements heard (pub/sub)
    restarts: int = 0  # starts of a new process seen since the gateway first saw one

    @property
    def ready(self) -> bool:
        return self.connected and self.health is not None and self.health.ready


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


class HealthMonitor:
    def __init__(self, config: Config, clients: dict[str, DaemonClient]) -> None:
        self._clients = clients
        self._config = config
        self._health: dict[str, Health | None] = dict.fromkeys(clients)
        self._errors: dict[str, str] = dict.fromkeys(clients, "")
        self._checked: dict[str, float] = dict.fromkeys(clients, 0.0)
        self._starts: dict[str, int] = dict.fromkeys(clients, 0)
        self._restarts: dict[str, int] = dict.fromkeys(clients, 0)
        # The newest process of each daemon seen, by its start time: from health answers and from
        # start announcements alike, so a gateway that missed a daemon's first announcement (it
        # started later, or restarted) still counts that daemon's next start as a restart.
        self._latest: dict[str, float | None] = dict.fromkeys(clients)
        self._wake = asyncio.Event()
        for client in clients.values():
            client.on_connect(self._wake.set)

    def state(self, service: str) -> DaemonState:
        return DaemonState(service, self._clients[service].connected, self._health[service],
                           self._checked[service], self._errors[service], self._starts[service],
                           self._restarts[service])

    def states(self) -> list[DaemonState]:
        return [self.state(s) for s in self._clients]

    def conditions(self) -> list[Condition]:
        return [
            self._condition("RuntimeReady", ("monitord", "storaged", "imaged")),
            self._condition("NetworkReady", ("netd",)),
        ]

    def _condition(self, kind: str, services: tuple[str, ...]) -> Condition:
        for service in services:
            st = self.state(service)
            if not st.connected:
                return Condition(kind, False, f"{service.capitalize()}Unavailable",
                                 f"criplex {service} is not running")
            if st.health is None:
                return Condition(kind, False, f"{service.capitalize()}Unknown",
                                 f"criplex {service} has not reported its health yet: {st.error}")
            if not st.health.ready:
                return Condition(kind, False, st.health.reason or f"{service.capitalize()}NotReady",
                                 st.health.message)
        return Condition(kind, True)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._poll())
            for service in self._clients:
                group.create_task(self._watch_starts(service))

    async def _poll(self) -> None:
        while True:
            await asyncio.gather(*(self._check(s) for s in self._clients))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _POLL_S)

    async def _check(self, service: str) -> None:
        client = self._clients[service]
        if not client.connected:
            self._health[service] = None
            self._errors[service] = "not connected"
            return
        try:
            health = self._health[service] = await client.call(HEALTH, HealthRequest(), _HEALTH_TIMEOUT_S)
            self._seen_process(service, health.started_at)
            self._errors[service] = ""
            self._checked[service] = time.time()
        except CriplexError as exc:
            self._errors[service] = exc.message
            if time.time() - self._checked[service] > _STALE_AFTER_S:
                self._health[service] = None

    def _seen_process(self, service: str, started_at: float) -> None:
        # Only a newer start counts: a health answer from the old process can arrive after the
        # new one's announcement.
        latest = self._latest[service]
        if latest is not None and started_at <= latest:
            return
        if latest is not None:
            self._restarts[service] += 1
        self._latest[service] = started_at

    async def _watch_starts(self, service: str) -> None:
        sub = EventSubscriber(service, self._config, (STARTED_TOPIC,))
        try:
            last: tuple[int, float] | None = None
            async for _topic, payload in sub.events():
                try:
                    started = parse(Started, payload, STARTED_TOPIC)
                except CriplexError as exc:
                    log.warning("%s: bad start announcement: %s", service, exc.message)
                    continue
                # Daemons repeat the announcement; count each start once.
                if (started.pid, started.started_at) != last:
                    last = (started.pid, started.started_at)
                    self._starts[service] += 1
                    self._seen_process(service, started.started_at)
                self._wake.set()
        finally:
            sub.close()
