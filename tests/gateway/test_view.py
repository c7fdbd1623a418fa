"""The gateway's view of pods and containers converges on monitord's state whatever the events do."""

from __future__ import annotations

import asyncio
import random

from services.gateway.view import StateView
from shared.schema.monitord import (
    ContainerRecord,
    ContainerState,
    ListStateResponse,
    SandboxRecord,
    SandboxState,
    StateChange,
)


def container(id_: str, revision: int, state: ContainerState = ContainerState.RUNNING) -> ContainerRecord:
    return ContainerRecord(id=id_, sandbox_id="s", name=f"n-{id_}", config_json="{}", image_id="i", image_ref="i",
                           state=state, created_at=1, revision=revision)


def sandbox(id_: str, revision: int) -> SandboxRecord:
    return SandboxRecord(id=id_, name=f"n-{id_}", config_json="{}", runtime_handler="runc",
                         state=SandboxState.READY, created_at=1, revision=revision)


def changed(record: ContainerRecord) -> StateChange:
    return StateChange("container", record.id, record.revision, container=record)


def removed(id_: str, revision: int) -> StateChange:
    return StateChange("container", id_, revision)


def view() -> StateView:
    async def make() -> StateView:
        return StateView()

    return asyncio.run(make())


def test_an_older_revision_never_replaces_a_newer_one():
    v = view()
    v.apply_container(container("a", 5, ContainerState.EXITED))
    v.apply_change(changed(container("a", 3, ContainerState.RUNNING)))
    assert v.containers["a"].state is ContainerState.EXITED


def test_a_late_event_cannot_resurrect_a_removed_record():
    v = view()
    v.apply_container(container("a", 3))
    v.forget("container", "a", 4)
    v.apply_change(changed(container("a", 3)))
    assert "a" not in v.containers


def test_a_relist_drops_what_it_does_not_list_and_keeps_what_is_newer():
    v = view()
    v.apply_container(container("gone", 2))
    v.apply_container(container("newer", 12))  # created after the listing was taken
    v.replace(ListStateResponse(sandboxes=(sandbox("s", 1),), containers=(container("kept", 5),), revision=10))
    assert set(v.containers) == {"kept", "newer"}
    assert set(v.sandboxes) == {"s"}
    # An event from before the listing about a record it does not have is stale.
    v.apply_change(changed(container("gone", 3)))
    assert "gone" not in v.containers


def test_the_view_converges_after_dropped_and_reordered_events():
    """monitord's history, delivered with losses and out of order; a relist repairs the rest."""
    rng = random.Random(7)
    truth: dict[str, ContainerRecord] = {}
    history: list[StateChange] = []
    revision = 0
    for step in range(500):
        revision += 1
        id_ = f"c{rng.randrange(20)}"
        if id_ in truth and rng.random() < 0.3:
            del truth[id_]
            history.append(removed(id_, revision))
        else:
            truth[id_] = container(id_, revision, rng.choice(list(ContainerState)[1:]))
            history.append(changed(truth[id_]))
        del step
    delivered = [c for c in history if rng.random() > 0.3]  # 30 % dropped
    rng.shuffle(delivered)
    v = view()
    for change in delivered:
        v.apply_change(change)
    v.replace(ListStateResponse(sandboxes=(), containers=tuple(truth.values()), revision=revision))
    assert v.containers == truth
    # Stale events still in flight after the relist change nothing.
    for change in history:
        v.apply_change(change)
    assert v.containers == truth
