"""The sandbox and container records: durable, revisioned, and announced on every change.

Each write takes a fresh revision (nanoseconds, strictly increasing even across restarts
and clock steps back, since it starts above the highest revision on disk), is made durable,
and only then published on STATE_TOPIC, so a subscriber never sees a change that a crash
could take back.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

from services.monitord.layout import Layout
from shared.schema.monitord import STATE_TOPIC, ContainerRecord, SandboxRecord, StateChange
from shared.state import RecordStore


class Publisher(Protocol):
    def publish(self, topic: str, payload: object) -> None: ...


class StateRecords:
    def __init__(self, layout: Layout, events: Publisher) -> None:
        self.sandboxes: RecordStore[SandboxRecord] = RecordStore(layout.sandbox_records, SandboxRecord)
        self.containers: RecordStore[ContainerRecord] = RecordStore(layout.container_records, ContainerRecord)
        self._events = events
        self.revision = 0  # the last one handed out

    def load(self) -> None:
        revisions = [r.revision for r in self.sandboxes.load().values()]
        revisions += [r.revision for r in self.containers.load().values()]
        self.revision = max(revisions, default=0)

    def _next_revision(self) -> int:
        self.revision = max(time.time_ns(), self.revision + 1)
        return self.revision

    def sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        return self.sandboxes.get(sandbox_id)

    def container(self, container_id: str) -> ContainerRecord | None:
        return self.containers.get(container_id)

    def containers_of(self, sandbox_id: str) -> list[ContainerRecord]:
        return [c for c in self.containers.values() if c.sandbox_id == sandbox_id]

    async def put_sandbox(self, record: SandboxRecord) -> SandboxRecord:
        record = dataclasses.replace(record, revision=self._next_revision())
        await self.sandboxes.put(record.id, record)
        self._events.publish(STATE_TOPIC, StateChange("sandbox", record.id, record.revision, sandbox=record))
        return record

    async def put_container(self, record: ContainerRecord) -> ContainerRecord:
        record = dataclasses.replace(record, revision=self._next_revision())
        await self.containers.put(record.id, record)
        self._events.publish(STATE_TOPIC, StateChange("container", record.id, record.revision, container=record))
        return record

    async def delete_sandbox(self, sandbox_id: str) -> None:
        await self.sandboxes.delete(sandbox_id)
        self._events.publish(STATE_TOPIC, StateChange("sandbox", sandbox_id, self._next_revision()))

    async def delete_container(self, container_id: str) -> None:
        await self.containers.delete(container_id)
        self._events.publish(STATE_TOPIC, StateChange("container", container_id, self._next_revision()))
