"""Shared in-flight work (one download for concurrent pulls) and the resync gate."""

import asyncio

import pytest

from services.imaged.inflight import SharedTasks, SyncGate


def run(coro):
    return asyncio.run(coro)


def test_concurrent_callers_share_one_execution_and_each_takes_its_share():
    async def scenario():
        starts, released = [], []
        gate = asyncio.Event()
        tasks: SharedTasks[str, str] = SharedTasks(release=released.append)

        async def work(fanout):
            starts.append(1)
            fanout(5)
            await gate.wait()
            fanout(5)
            return "blob"

        heard: dict[str, int] = {"a": 0, "b": 0}
        a = asyncio.create_task(tasks.run("k", work, take=lambda v: v + "-a",
                                          listener=lambda n: heard.__setitem__("a", heard["a"] + n)))
        await asyncio.sleep(0.01)
        b = asyncio.create_task(tasks.run("k", work, take=lambda v: v + "-b",
                                          listener=lambda n: heard.__setitem__("b", heard["b"] + n)))
        await asyncio.sleep(0.01)
        gate.set()
        assert await a == "blob-a" and await b == "blob-b"
        assert starts == [1]
        assert heard == {"a": 10, "b": 10}  # the late joiner caught up on the first 5 bytes
        assert released == ["blob"]  # once, after both took their share
        assert len(tasks) == 0

    run(scenario())


def test_work_continues_while_any_caller_waits():
    async def scenario():
        gate = asyncio.Event()
        tasks: SharedTasks[str, int] = SharedTasks()

        async def work(_):
            await gate.wait()
            return 7

        a = asyncio.create_task(tasks.run("k", work, take=lambda v: v))
        b = asyncio.create_task(tasks.run("k", work, take=lambda v: v))
        await asyncio.sleep(0.01)
        a.cancel()  # e.g. that pull hit its deadline
        await asyncio.sleep(0.01)
        gate.set()
        assert await b == 7
        with pytest.raises(asyncio.CancelledError):
            await a

    run(scenario())


def test_work_is_cancelled_when_every_caller_left():
    async def scenario():
        cancelled = asyncio.Event()
        tasks: SharedTasks[str, int] = SharedTasks()

        async def work(_):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return 1

        a = asyncio.create_task(tasks.run("k", work, take=lambda v: v))
        await asyncio.sleep(0.01)
        a.cancel()
        await asyncio.wait_for(cancelled.wait(), 1)
        assert len(tasks) == 0

    run(scenario())


def test_a_failure_is_not_remembered_for_the_next_caller():
    async def scenario():
        calls = []
        tasks: SharedTasks[str, int] = SharedTasks()

        async def work(_):
            calls.append(1)
            if len(calls) == 1:
                raise ValueError("registry hiccup")
            return 2

        with pytest.raises(ValueError):
            await tasks.run("k", work, take=lambda v: v)
        assert await tasks.run("k", work, take=lambda v: v) == 2
        assert len(calls) == 2

    run(scenario())


def test_gate_exclusive_waits_for_shared_holders_and_blocks_new_ones():
    async def scenario():
        gate = SyncGate()
        events = []
        release_pull = asyncio.Event()

        async def pull(name, hold):
            async with gate.shared():
                events.append(f"{name}+")
                await hold.wait()
                events.append(f"{name}-")

        async def sync():
            async with gate.exclusive():
                events.append("sync+")
                await asyncio.sleep(0.01)
                events.append("sync-")

        p1 = asyncio.create_task(pull("p1", release_pull))
        await asyncio.sleep(0.01)
        s = asyncio.create_task(sync())
        await asyncio.sleep(0.01)
        assert events == ["p1+"]  # the sync waits for the pull in progress
        release_pull.set()
        await asyncio.sleep(0)
        await s
        done = asyncio.Event()
        done.set()
        await pull("p2", done)
        await p1
        assert events == ["p1+", "p1-", "sync+", "sync-", "p2+", "p2-"]

    run(scenario())


def test_gate_prefers_readers_so_pulls_never_queue_behind_a_waiting_sync():
    async def scenario():
        gate = SyncGate()
        hold = asyncio.Event()
        entered = []

        async def holder():
            async with gate.shared():
                await hold.wait()

        async def sync():
            async with gate.exclusive():
                entered.append("sync")

        h = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        s = asyncio.create_task(sync())
        await asyncio.sleep(0.01)
        async with gate.shared():
            entered.append("pull")
        hold.set()
        await h
        await s
        assert entered == ["pull", "sync"]

    run(scenario())


def test_join_waits_for_work_in_flight_and_keeps_it_alive():
    async def scenario():
        tasks: SharedTasks[str, int] = SharedTasks()
        gate = asyncio.Event()
        order = []

        async def parent(_):
            await gate.wait()
            order.append("parent stored")
            return 1

        async def child():
            await tasks.join("parent")
            order.append("child applied")

        assert not await tasks.join("nothing")  # no work in flight: nothing to wait for
        owner = asyncio.create_task(tasks.run("parent", parent, take=lambda v: v))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(child())
        await asyncio.sleep(0.01)
        owner.cancel()  # the pull that started the parent goes away; the child still needs it
        await asyncio.sleep(0.01)
        gate.set()
        await waiter
        assert order == ["parent stored", "child applied"]

    run(scenario())


def test_release_follows_the_last_take():
    async def scenario():
        events = []
        tasks: SharedTasks[str, str] = SharedTasks(release=lambda v: events.append(f"release {v}"))

        async def work(_):
            await asyncio.sleep(0.01)
            return "blob"

        await asyncio.gather(*(tasks.run("k", work, take=lambda v, i=i: events.append(f"take {i}"))
                               for i in range(3)))
        assert events[-1] == "release blob" and events.count("release blob") == 1
        assert sorted(events[:3]) == ["take 0", "take 1", "take 2"]

    run(scenario())
