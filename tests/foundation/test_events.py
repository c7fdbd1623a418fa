"""Events: delivered across restarts, and every possible loss turns into a resync request."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pynng

from shared.events import EventPublisher, EventSubscriber
from shared.nngio import listen, prepare_ipc_dir
from shared.wire import encode_event, parse
from tests.foundation.echo import until
from tests.support.runtime import REPO

_PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.foundation.echo import make_config
    from shared.events import EventPublisher
    pub = EventPublisher("echo", make_config(Path(sys.argv[1])))
    while True:
        pub.publish("tick", {"from": sys.argv[2]})
        time.sleep(0.02)
""")


@contextlib.contextmanager
def publisher_process(config, tag: str):
    base = str(config.ipc_dir.parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", _PUBLISHER, base, tag], cwd=REPO)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def subscribed(config, topics=("",), queue_size: int = 10000):
    sub = EventSubscriber("echo", config, topics, queue_size)
    reasons: list[str] = []
    sub.on_resync(reasons.append)
    try:
        yield sub, reasons
    finally:
        sub.close()


@contextlib.contextmanager
def raw_publisher(config):
    """A PUB socket that sends whatever bytes a test crafts: gaps and epochs on purpose."""
    prepare_ipc_dir(config)
    sock = pynng.Pub0()
    listen(sock, config.events_address("echo"))
    try:
        yield sock
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def consuming(sub: EventSubscriber):
    seen: list[tuple[str, object]] = []

    async def consume():
        async for event in sub.events():
            seen.append(event)

    task = asyncio.create_task(consume())
    try:
        yield seen
    finally:
        task.cancel()


def test_pub_sub_survives_publisher_and_subscriber_restarts(config):
    async def main():
        with subscribed(config, ("tick",)) as (sub, reasons):
            async with consuming(sub) as seen:
                with publisher_process(config, "one"):
                    await until(lambda: ("tick", {"from": "one"}) in seen, "no event from the first publisher")
                with publisher_process(config, "two"):
                    await until(lambda: ("tick", {"from": "two"}) in seen, "no event after the publisher restart")
                    assert reasons.count("connected") >= 2, "the subscriber must hear it reconnected"
                    # And a subscriber that starts later picks the stream up too.
                    with subscribed(config, ("tick",)) as (late, _):
                        async with consuming(late) as late_seen:
                            await until(lambda: ("tick", {"from": "two"}) in late_seen,
                                        "a late subscriber hears nothing")

    asyncio.run(main())


def test_sequence_gap_and_new_epoch_ask_for_a_resync(config):
    async def main():
        with raw_publisher(config) as pub, subscribed(config) as (sub, reasons):
            async with consuming(sub) as seen:
                await until(lambda: reasons == ["connected"], "no resync on connect")
                for seq in (1, 2):
                    pub.send(encode_event("pod", b"epoch-one", seq, {"n": seq}))
                await until(lambda: len(seen) == 2, "events 1 and 2 never arrived")
                assert reasons == ["connected"], "consecutive events are not a gap"
                pub.send(encode_event("pod", b"epoch-one", 5, {"n": 5}))  # 3 and 4 were "lost"
                await until(lambda: len(reasons) == 2, "a gap must ask for a resync")
                assert reasons[1] == "pod: events 3..4 lost"
                pub.send(encode_event("pod", b"epoch-two", 1, {"n": 1}))  # the publisher restarted
                await until(lambda: len(reasons) == 3, "a new epoch must ask for a resync")
                assert reasons[2] == "publisher restarted"
                assert [payload["n"] for _topic, payload in seen] == [1, 2, 5, 1], "events still arrive"

    asyncio.run(main())


def test_sequences_are_per_topic_so_a_filtered_topic_is_no_gap(config):
    async def main():
        publisher = EventPublisher("echo", config)
        try:
            with subscribed(config, ("pod",)) as (sub, reasons):
                async with consuming(sub) as seen:
                    await until(lambda: reasons == ["connected"], "no resync on connect")
                    for topic in ("pod", "image", "image", "pod", "image", "pod"):
                        publisher.publish(topic, {"topic": topic})
                    await until(lambda: len(seen) == 3, "the pod events never arrived")
                    assert reasons == ["connected"]
                    assert {topic for topic, _payload in seen} == {"pod"}
        finally:
            publisher.close()

    asyncio.run(main())


def test_queue_overflow_drops_events_and_asks_for_a_resync(config):
    async def main():
        publisher = EventPublisher("echo", config)
        try:
            with subscribed(config, queue_size=2) as (sub, reasons):
                await until(lambda: reasons == ["connected"], "no resync on connect")
                for n in range(6):
                    publisher.publish("pod", {"n": n})
                await until(lambda: "event queue overflowed" in reasons, "an overflow must ask for a resync")
                async with consuming(sub) as seen:
                    await until(lambda: len(seen) == 2, "the queued events never came out")
                    assert [payload["n"] for _topic, payload in seen] == [0, 1]
                    assert reasons == ["connected", "event queue overflowed"], "one resync per overflow"
                    publisher.publish("pod", {"n": 6})  # after a drained queue, events flow again
                    await until(lambda: len(seen) == 3, "events stopped after the overflow")
        finally:
            publisher.close()

    asyncio.run(main())


@dataclass(frozen=True)
class Change:
    key: str
    value: int
    revision: int


class Owner:
    """A daemon's state, published as change events; its listing is the truth."""

    def __init__(self, config) -> None:
        self.config = config
        self.revision = 0
        self.state: dict[str, tuple[int, int]] = {}
        self.events: EventPublisher | None = EventPublisher("echo", config)

    def set(self, key: str, value: int) -> None:
        self.revision += 1
        self.state[key] = (value, self.revision)
        if self.events is not None:
            self.events.publish("kv", Change(key, value, self.revision))

    def restart(self) -> None:
        assert self.events is not None
        self.events.close()
        self.events = None

    def started(self) -> None:
        self.events = EventPublisher("echo", self.config)

    def listing(self) -> dict[str, tuple[int, int]]:
        return dict(self.state)


class Mirror:
    """A subscriber's copy: events applied by revision, relisted whenever a resync is asked for."""

    def __init__(self, owner: Owner, sub: EventSubscriber) -> None:
        self.owner = owner
        self.view: dict[str, tuple[int, int]] = {}
        self.need_relist = asyncio.Event()
        self.relists = 0
        sub.on_resync(lambda _reason: self.need_relist.set())

    async def relister(self) -> None:
        while True:
            await self.need_relist.wait()
            self.need_relist.clear()
            await asyncio.sleep(0)  # a relist is a call: other work runs meanwhile
            for key, held in self.owner.listing().items():
                self.apply(key, held)
            self.relists += 1

    def apply(self, key: str, held: tuple[int, int]) -> None:
        if key not in self.view or self.view[key][1] < held[1]:
            self.view[key] = held

    async def consume(self, sub: EventSubscriber, slow: asyncio.Event) -> None:
        async for _topic, payload in sub.events():
            await slow.wait()
            change = parse(Change, payload, "kv")
            self.apply(change.key, (change.value, change.revision))


def test_a_relisting_subscriber_converges_after_events_are_lost(config):
    async def main():
        owner = Owner(config)
        with subscribed(config, ("kv",), queue_size=8) as (sub, reasons):
            mirror = Mirror(owner, sub)
            flowing = asyncio.Event()
            tasks = [asyncio.create_task(mirror.relister()), asyncio.create_task(mirror.consume(sub, flowing))]
            try:
                await until(lambda: "connected" in reasons and mirror.relists >= 1, "never connected")
                # A stalled consumer: most of these changes overflow its queue.
                for n in range(300):
                    owner.set(f"k{n % 20}", n)
                    if n % 50 == 0:
                        await asyncio.sleep(0.01)
                await until(lambda: "event queue overflowed" in reasons, "nothing was dropped")
                flowing.set()
                await until(lambda: mirror.view == owner.listing(), "the mirror did not converge after drops")
                # The owner restarts, and changes while no one can hear.
                owner.restart()
                for n in range(300, 310):
                    owner.set(f"k{n % 20}", n)
                owner.started()
                await until(lambda: mirror.view == owner.listing(), "the mirror did not converge after a restart")
                owner.set("k0", 1000)
                await until(lambda: mirror.view["k0"][0] == 1000, "events stopped flowing after the restart")
            finally:
                for task in tasks:
                    task.cancel()
                assert owner.events is not None
                owner.events.close()

    asyncio.run(main())
