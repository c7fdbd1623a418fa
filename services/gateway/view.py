"""The gateway's view of pods and containers, so status and list calls never wait on a daemon.

monitord owns the records; the gateway mirrors them from two sources:
- the record each monitord call returns (so a kubelet that lists right after a
  CreateContainer sees it: read-your-writes without waiting for an event);
- monitord's STATE_TOPIC events, carrying each change with its revision.

A record is applied only when its revision is newer than what the view holds (events
and replies may arrive in either order); a removal leaves a tombstone so a late event
cannot bring the record back. Whenever the event stream may have lost something (a
reconnect, a new publisher epoch, a sequence gap, an overflow), the view relists with
LIST_STATE: level-triggered, like an informer's relist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from google.protobuf import json_format

from shared.config import Config
from shared.cri import api_pb2
from shared.errors import CriplexError, Unavailable
from shared.schema.monitord import (
    LIST_STATE,
    STATE_TOPIC,
    ContainerRecord,
    ContainerState,
    ListStateRequest,
    ListStateResponse,
    SandboxRecord,
    SandboxState,
    StateChange,
)
from shared.transport import DaemonClient, EventSubscriber
from shared.wire import parse

log = logging.getLogger(__name__)

# How long a list or status call waits for the view's first listing after a gateway start.
_FIRST_SYNC_WAIT_S = 2.0
_RELIST_TIMEOUT_S = 5.0
# A relist also runs this often: cheap insurance against a bug in gap detection.
_RELIST_EVERY_S = 60.0


@dataclass
class _Parsed:
    config_json: str
    message: object


@dataclass
class StateView:
    sandboxes: dict[str, SandboxRecord] = field(default_factory=dict)
    containers: dict[str, ContainerRecord] = field(default_factory=dict)
    _tombstones: dict[str, int] = field(default_factory=dict)
    _parsed: dict[str, _Parsed] = field(default_factory=dict)
    _listeners: list[Callable[[StateChange], None]] = field(default_factory=list)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    relists: int = 0
    # Changes with every applied change: answers built from the view are cached under it.
    generation: int = 0
    _memo: dict[str, bytes] = field(default_factory=dict)
    _memo_generation: int = -1
    _floor: int = 0

    # --- applying what monitord says --------------------------------------------------

    def apply_sandbox(self, record: SandboxRecord) -> None:
        self._apply("sandbox", record.id, record.revision, record)

    def apply_container(self, record: ContainerRecord) -> None:
        self._apply("container", record.id, record.revision, record)

    def forget(self, kind: str, id_: str, revision: int) -> None:
        self._apply(kind, id_, revision, None)

    def apply_change(self, change: StateChange) -> None:
        self._apply(change.kind, change.id, change.revision, change.sandbox or change.container)

    def _apply(self, kind: str, id_: str, revision: int,
               record: SandboxRecord | ContainerRecord | None) -> None:
        table = self._table(kind)
        current = table.get(id_)
        held = current.revision if current is not None else max(self._tombstones.get(id_, 0), self._floor)
        if revision <= held:
            return
        if record is None:
            self._remove(kind, id_, revision)
            return
        table[id_] = record
        self._tombstones.pop(id_, None)
        self._notify(StateChange(kind, id_, revision,
                                 sandbox=record if isinstance(record, SandboxRecord) else None,
                                 container=record if isinstance(record, ContainerRecord) else None))

    def _table(self, kind: str) -> dict[str, SandboxRecord | ContainerRecord]:
        return self.sandboxes if kind == "sandbox" else self.containers  # type: ignore[return-value]

    def _remove(self, kind: str, id_: str, revision: int) -> None:
        if self._table(kind).pop(id_, None) is not None:
            self._notify(StateChange(kind, id_, revision))
        self._parsed.pop(id_, None)
        self._tombstones[id_] = revision

    def _notify(self, change: StateChange) -> None:
        self.generation += 1
        for listener in list(self._listeners):
            listener(change)

    def replace(self, snapshot: ListStateResponse) -> None:
        """Take a full listing: it is authoritative for everything up to its revision."""
        for kind, records in (("sandbox", snapshot.sandboxes), ("container", snapshot.containers)):
            table = self._table(kind)
            listed = {r.id for r in records}
            for id_, held in list(table.items()):
                if id_ not in listed and held.revision <= snapshot.revision:
                    self._remove(kind, id_, snapshot.revision)
            for record in records:
                self._apply(kind, record.id, record.revision, record)
        # Anything at or below the listing's revision that the listing lacks is gone.
        self._floor = max(self._floor, snapshot.revision)
        self._tombstones = {k: v for k, v in self._tombstones.items() if v > self._floor}
        self.relists += 1
        self.synced.set()

    def memo(self, key: str, build: Callable[[], bytes]) -> bytes:
        """`build()`'s bytes, built once per generation: the kubelet lists every second, and
        most of those lists find nothing changed."""
        if self._memo_generation != self.generation:
            self._memo.clear()
            self._memo_generation = self.generation
        cached = self._memo.get(key)
        if cached is None:
            cached = self._memo[key] = build()
        return cached

    def subscribe(self, listener: Callable[[StateChange], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # --- reading ----------------------------------------------------------------------

    async def wait_synced(self) -> None:
        if self.synced.is_set():
            return
        try:
            await asyncio.wait_for(self.synced.wait(), _FIRST_SYNC_WAIT_S)
        except TimeoutError:
            raise Unavailable("criplex monitord has not answered since the gateway started") from None

    def visible_sandboxes(self) -> Iterable[SandboxRecord]:
        return (s for s in self.sandboxes.values() if s.state is not SandboxState.CREATING)

    def visible_containers(self) -> Iterable[ContainerRecord]:
        return (c for c in self.containers.values() if c.state is not ContainerState.CREATING)

    def sandbox(self, id_: str) -> SandboxRecord | None:
        record = self.sandboxes.get(id_)
        if record is None or record.state is SandboxState.CREATING:
            return None
        return record

    def container(self, id_: str) -> ContainerRecord | None:
        record = self.containers.get(id_)
        if record is None or record.state is ContainerState.CREATING:
            return None
        return record

    def sandbox_config(self, record: SandboxRecord) -> api_pb2.PodSandboxConfig:
        return self._parse(record.id, record.config_json, api_pb2.PodSandboxConfig)  # type: ignore[return-value]

    def container_config(self, record: ContainerRecord) -> api_pb2.ContainerConfig:
        return self._parse(record.id, record.config_json, api_pb2.ContainerConfig)  # type: ignore[return-value]

    def _parse(self, id_: str, config_json: str, cls: type) -> object:
        cached = self._parsed.get(id_)
        if cached is not None and cached.config_json == config_json:
            return cached.message
        message = json_format.Parse(config_json, cls(), ignore_unknown_fields=True)
        self._parsed[id_] = _Parsed(config_json, message)
        return message


class ViewSync:
    """Keeps a StateView current from monitord's events, relisting when they may have gaps."""

    def __init__(self, config: Config, monitord: DaemonClient, view: StateView) -> None:
        self._config = config
        self._monitord = monitord
        self._view = view
        self._relist = asyncio.Event()
        self._relist.set()
        monitord.on_connect(self._relist.set)

    def request_relist(self, reason: str) -> None:
        log.debug("view relist requested: %s", reason)
        self._relist.set()

    async def run(self) -> None:
        sub = EventSubscriber("monitord", self._config, (STATE_TOPIC,))
        sub.on_resync(self.request_relist)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._consume(sub))
                group.create_task(self._relister())
        finally:
            sub.close()

    async def _consume(self, sub: EventSubscriber) -> None:
        async for topic, payload in sub.events():
            if topic != STATE_TOPIC:
                continue
            try:
                change = parse(StateChange, payload, STATE_TOPIC)
            except CriplexError as exc:
                log.warning("bad state event from monitord: %s", exc.message)
                self.request_relist("undecodable event")
                continue
            self._view.apply_change(change)

    async def _relister(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relist.wait(), _RELIST_EVERY_S)
            self._relist.clear()
            try:
                snapshot = await self._monitord.call(LIST_STATE, ListStateRequest(), _RELIST_TIMEOUT_S)
            except CriplexError as exc:
                log.info("view relist failed (%s); retrying", exc.message)
                # Connected: try again shortly. Not connected: the reconnection asks (on_connect).
                if self._monitord.connected:
                    await asyncio.sleep(0.2)
                    self._relist.set()
                continue
            self._view.replace(snapshot)


def to_json(message: object) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)  # type: ignore[arg-type]
