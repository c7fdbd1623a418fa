"""Events over nng pub/sub, and telling a subscriber when it may have missed some.

Pub/sub drops silently: nng discards a message for a subscriber whose queue is full,
and nothing is delivered while a pipe is down. So events are hints, never the record:
a subscriber that may have missed one relists the owner's state (level-triggered, like
an informer's relist), and `on_resync` says when.

Every event carries its publisher's epoch (random per publisher, so per daemon start)
and a sequence number per topic. Per topic, because subscribers filter by topic prefix:
numbers of topics a subscriber does not receive must not look like gaps to it. A
subscriber asks for a resync when its pipe (re)connects, when an event comes from a new
epoch, when a topic's sequence skips, and when its own queue overflows. A loss is seen at
the next event on the same topic, or at the reconnection; the first event of a topic
after a connection sets the baseline (what came before it is covered by the
connection's resync).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pynng

from shared.config import Config
from shared.errors import InvalidArgument
from shared.nngio import LoopSocket, PipeWatch, listen, prepare_ipc_dir
from shared.wire import decode_event, encode_event

log = logging.getLogger(__name__)

_QUEUE_SIZE = 10000


class EventPublisher:
    """A daemon's PUB socket; publishing never blocks (nng drops for slow subscribers)."""

    def __init__(self, service: str, config: Config) -> None:
        prepare_ipc_dir(config)
        self.epoch = os.urandom(8)
        self._seq: dict[str, int] = {}
        self._sock = pynng.Pub0()
        listen(self._sock, config.events_address(service))

    def publish(self, topic: str, payload: object) -> None:
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        self._sock.send(encode_event(topic, self.epoch, seq, payload), block=False)

    def close(self) -> None:
        self._sock.close()


class EventSubscriber:
    """Dials a daemon's PUB socket and keeps doing so across restarts of either side."""

    def __init__(self, service: str, config: Config, topics: tuple[str, ...] = ("",),
                 queue_size: int = _QUEUE_SIZE) -> None:
        self.service = service
        self._sock = pynng.Sub0(
            recv_max_size=config.transport.max_message_bytes,
            reconnect_time_min=config.transport.reconnect_min_ms,
            reconnect_time_max=config.transport.reconnect_max_ms,
        )
        for topic in topics:
            self._sock.subscribe(topic.encode())
        self._resync_callbacks: list[Callable[[str], None]] = []
        self._epoch: bytes | None = None
        self._last_seq: dict[str, int] = {}
        self._overflowing = False
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._ready = asyncio.Event()
        self._pipes = PipeWatch(self._sock)
        self._pipes.on_connect.append(self._connected)
        self._io = LoopSocket(self._sock, self._on_event)
        self._sock.dial(config.events_address(service), block=False)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Called on each (re)connection of the pipe."""
        self._pipes.on_connect.append(callback)

    def on_resync(self, callback: Callable[[str], None]) -> None:
        """Called on the event loop, with a short reason, whenever events may have been missed.

        That is on each (re)connection, a publisher restart, a gap in a topic's sequence, and
        an overflow of this subscriber's queue: the moment to relist the owner's state.
        """
        self._resync_callbacks.append(callback)

    def _resync(self, reason: str) -> None:
        log.debug("%s events: resync (%s)", self.service, reason)
        for callback in self._resync_callbacks:
            callback(reason)

    def _connected(self) -> None:
        # Whatever was published while the pipe was down is covered by this resync, so the
        # next event of any topic (maybe from a new epoch) starts a new baseline.
        self._epoch = None
        self._last_seq.clear()
        self._resync("connected")

    def _on_event(self, _header: bytes, body: bytes) -> None:
        try:
            event = decode_event(body)
        except InvalidArgument as exc:
            log.warning("%s: undecodable event dropped: %s", self.service, exc.message)
            self._resync("undecodable event")
            return
        if event.epoch is not None:
            if event.epoch != self._epoch:
                if self._epoch is not None:
                    self._resync("publisher restarted")
                self._epoch = event.epoch
                self._last_seq.clear()
            last = self._last_seq.get(event.topic)
            self._last_seq[event.topic] = event.seq
            if last is not None and event.seq != last + 1:
                self._resync(f"{event.topic}: events {last + 1}..{event.seq - 1} lost")
        if len(self._queue) >= self._queue_size:
            # Once per overflow: until the consumer catches up, every further event is lost too.
            if not self._overflowing:
                self._overflowing = True
                log.warning("%s: event queue full, dropping events until it drains", self.service)
                self._resync("event queue overflowed")
            return
        self._overflowing = False
        self._queue.append((event.topic, event.payload))
        self._ready.set()

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """Yield (topic, payload) in the order received; payloads are plain data (see `wire.parse`)."""
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            yield self._queue.popleft()

    def close(self) -> None:
        self._io.close()
        self._sock.close()
