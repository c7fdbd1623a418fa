"""CRI GetContainerEvents: container lifecycle events from the gateway's view, as they happen.

The view is fed by monitord's ordered state events (and relists), so the stream sees
every transition the kubelet's Evented PLEG needs: created, started, stopped, deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from services.gateway import containers, sandboxes
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.monitord import ContainerState, StateChange

if TYPE_CHECKING:
    from services.gateway.app import Gateway

_EVENT_OF_STATE = {
    ContainerState.CREATED: api_pb2.CONTAINER_CREATED_EVENT,
    ContainerState.RUNNING: api_pb2.CONTAINER_STARTED_EVENT,
    ContainerState.EXITED: api_pb2.CONTAINER_STOPPED_EVENT,
}
_QUEUE_MAX = 10000


async def get_container_events(gw: Gateway, _req: api_pb2.GetEventsRequest, _call: Call
                               ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    queue: asyncio.Queue[StateChange] = asyncio.Queue(_QUEUE_MAX)
    last: dict[str, int] = {}

    def listen(change: StateChange) -> None:
        if change.kind == "container" and not queue.full():
            queue.put_nowait(change)

    unsubscribe = gw.view.subscribe(listen)
    try:
        while True:
            change = await queue.get()
            event = _event(gw, change, last)
            if event is not None:
                yield event
    finally:
        unsubscribe()


def _event(gw: Gateway, change: StateChange, last: dict[str, int]) -> api_pb2.ContainerEventResponse | None:
    record = change.container
    if record is None:
        kind = api_pb2.CONTAINER_DELETED_EVENT
    elif record.state in _EVENT_OF_STATE:
        kind = _EVENT_OF_STATE[record.state]
    else:
        return None
    if last.get(change.id) == kind:
        return None  # another change within the same state (e.g. resources updated)
    last[change.id] = kind
    if kind == api_pb2.CONTAINER_DELETED_EVENT:
        last.pop(change.id, None)
    event = api_pb2.ContainerEventResponse(container_id=change.id, container_event_type=kind,
                                           created_at=time.time_ns())
    if record is not None:
        event.containers_statuses.append(containers.to_cri_status(record, gw.view.container_config(record)))
        sandbox = gw.view.sandboxes.get(record.sandbox_id)
        if sandbox is not None:
            event.pod_sandbox_status.CopyFrom(sandboxes.to_cri_status(sandbox, gw.view.sandbox_config(sandbox)))
    return event
