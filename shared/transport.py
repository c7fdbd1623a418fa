"""nng transport between the gateway and the daemons.

Request/reply: the daemon listens with a REP socket served by `workers` nng
contexts, so that many calls run at once; the gateway dials with one REQ socket
per daemon and opens a context per call.

Two nng behaviours shape this module:
- REQ resends an outstanding request when its pipe goes away, so a request could
  run twice. Timed resends are off (`resend_time` is a day), every request
  carries a random id that the server de-duplicates, and when a pipe is removed
  the client fails its calls at once with UNAVAILABLE and closes their contexts,
  which withdraws the request before a restarted daemon could receive it again.
- nng is not fork-safe: daemons only start children with fork+exec
  (asyncio subprocesses), never a bare fork.

Pub/sub: a daemon publishes events on its own PUB socket; subscribers dial and
are told when their pipe (re)connects, so they can resynchronise the state they
may have missed while either side was down.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pynng

from shared.config import Config
from shared.errors import CriplexError, DeadlineExceeded, Internal, Unavailable, Unimplemented
from shared.tracing import Tracing, record_error
from shared.wire import (
    Method,
    decode_event,
    decode_request,
    decode_response,
    encode_error,
    encode_event,
    encode_request,
    encode_response,
    parse,
)

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any], Awaitable[Any]]

_NO_RESEND_MS = 24 * 3600 * 1000
# How long a call waits for a pipe that is not there yet: one reconnect interval,
# so a daemon that just came back is reached, and a dead one fails fast.
_CONNECT_GRACE_S = 0.3
_DEDUP_ENTRIES = 4096


def prepare_ipc_dir(config: Config) -> None:
    """Create the ipc directory root-only: its permissions are the sockets' access control."""
    path = config.ipc_dir
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise Internal(f"{path} must be owned by uid {os.getuid()} with mode 0700")


def _address_path(address: str) -> Path:
    return Path(address.removeprefix("ipc://"))


class _PipeWatch:
    """Counts a socket's pipes and tells the event loop when they come and go.

    nng calls pipe callbacks on its own threads; everything here hops onto the loop.
    """

    def __init__(self, sock: pynng.Socket, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self.connected = asyncio.Event()
        self.on_connect: list[Callable[[], None]] = []
        self.on_remove: list[Callable[[], None]] = []
        self._loop = loop
        sock.add_post_pipe_connect_cb(lambda _pipe: loop.call_soon_threadsafe(self._added))
        sock.add_post_pipe_remove_cb(lambda _pipe: loop.call_soon_threadsafe(self._removed))

    def _added(self) -> None:
        self.count += 1
        self.connected.set()
        for cb in self.on_connect:
            cb()

    def _removed(self) -> None:
        self.count = max(0, self.count - 1)
        if self.count == 0:
            self.connected.clear()
        for cb in self.on_remove:
            cb()


class DaemonClient:
    """The gateway's handle on one daemon: typed calls with deadlines and fail-fast."""

    def __init__(self, service: str, config: Config, tracing: Tracing) -> None:
        self.service = service
        self._tracing = tracing
        self._default_timeout = config.gateway.default_timeout
        self._sock = pynng.Req0(
            resend_time=_NO_RESEND_MS,
            recv_max_size=config.transport.max_message_bytes,
            reconnect_time_min=config.transport.reconnect_min_ms,
            reconnect_time_max=config.transport.reconnect_max_ms,
        )
        self._pipes = _PipeWatch(self._sock, asyncio.get_running_loop())
        self._pipes.on_remove.append(self._fail_calls)
        self._calls: set[asyncio.Task[Any]] = set()
        self._lost: set[asyncio.Task[Any]] = set()
        self._sock.dial(config.ipc_address(service), block=False)

    @property
    def connected(self) -> bool:
        return self._pipes.count > 0

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._pipes.on_connect.append(callback)

    def _fail_calls(self) -> None:
        for task in self._calls:
            self._lost.add(task)
            task.cancel()

    async def call(self, method: Method[Req, Resp], args: Req, timeout: float | None = None) -> Resp:
        """Call `method` on the daemon; raise its typed error, Unavailable or DeadlineExceeded."""
        timeout = self._default_timeout if timeout is None else timeout
        deadline = time.time() + timeout
        task = asyncio.current_task()
        assert task is not None
        with self._tracing.client_span(f"{self.service}/{method.name}"):
            if not self.connected:
                try:
                    await asyncio.wait_for(self._pipes.connected.wait(), min(timeout, _CONNECT_GRACE_S))
                except TimeoutError:
                    raise Unavailable(f"{self.service} is not running (no connection)") from None
            request_id = os.urandom(16)
            payload = encode_request(request_id, method, deadline, self._tracing.traceparent(), args)
            ctx = self._sock.new_context()
            self._calls.add(task)
            try:
                async with asyncio.timeout(timeout):
                    await ctx.asend(payload)
                    while True:
                        rid, result = decode_response(await ctx.arecv(), method)
                        if rid == request_id:
                            return result
            except asyncio.CancelledError:
                if task in self._lost:
                    self._lost.discard(task)
                    task.uncancel()
                    raise Unavailable(f"{self.service} went away during {method.name}") from None
                raise
            except TimeoutError:
                raise DeadlineExceeded(f"{self.service} did not answer {method.name} in {timeout:.3g}s") \
                    from None
            except pynng.NNGException as exc:
                raise Unavailable(f"{self.service}: {exc}") from None
            finally:
                self._calls.discard(task)
                self._lost.discard(task)
                ctx.close()

    def close(self) -> None:
        self._sock.close()


class DaemonServer:
    """Serves a daemon's `Method`s on its ipc socket with concurrent nng contexts."""

    def __init__(self, service: str, config: Config, tracing: Tracing) -> None:
        self.service = service
        self._config = config
        self._tracing = tracing
        self._handlers: dict[str, tuple[Method[Any, Any], Handler]] = {}
        self._recent: collections.OrderedDict[bytes, asyncio.Future[bytes]] = collections.OrderedDict()
        self._sock: pynng.Rep0 | None = None

    def register(self, method: Method[Req, Resp], handler: Callable[[Req], Awaitable[Resp]]) -> None:
        if method.name in self._handlers:
            raise ValueError(f"{method.name} registered twice")
        self._handlers[method.name] = (method, handler)

    async def serve(self) -> None:
        """Listen and serve until cancelled."""
        prepare_ipc_dir(self._config)
        address = self._config.ipc_address(self.service)
        _address_path(address).unlink(missing_ok=True)
        self._sock = pynng.Rep0(recv_max_size=self._config.transport.max_message_bytes)
        self._sock.listen(address)
        log.info("%s serving on %s", self.service, address)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self._config.transport.workers):
                    group.create_task(self._worker(self._sock.new_context()))
        finally:
            self._sock.close()

    async def _worker(self, ctx: pynng.Context) -> None:
        while True:
            try:
                data = await ctx.arecv()
            except pynng.Closed:
                return
            reply = await self._dispatch(data)
            try:
                await ctx.asend(reply)
            except pynng.Closed:
                return
            except pynng.NNGException as exc:
                # The caller's pipe is gone (it gave up or restarted): nothing to answer.
                log.debug("%s: reply dropped: %s", self.service, exc)

    async def _dispatch(self, data: bytes) -> bytes:
        try:
            request = decode_request(data)
        except CriplexError as exc:
            return encode_error(b"", exc)
        # A resent request (same id) joins the first execution instead of running twice.
        existing = self._recent.get(request.request_id)
        if existing is not None:
            return await asyncio.shield(existing)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._recent[request.request_id] = future
        if len(self._recent) > _DEDUP_ENTRIES:
            self._recent.popitem(last=False)
        reply = await self._execute(request)
        future.set_result(reply)
        return reply

    async def _execute(self, request: Any) -> bytes:
        rid = request.request_id
        entry = self._handlers.get(request.method)
        if entry is None:
            return encode_error(rid, Unimplemented(f"{self.service} has no method {request.method!r}"))
        method, handler = entry
        with self._tracing.server_span(f"{self.service}/{method.name}", request.traceparent):
            try:
                args = parse(method.request, request.args, method.name)
                remaining = request.deadline - time.time() if request.deadline else None
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(f"{method.name}: deadline passed before it started")
                async with asyncio.timeout(remaining):
                    result = await handler(args)
                return encode_response(rid, result)
            except CriplexError as exc:
                record_error(exc)
                return encode_error(rid, exc)
            except TimeoutError as exc:
                record_error(exc)
                return encode_error(rid, DeadlineExceeded(f"{method.name} ran past its deadline"))
            except Exception as exc:
                record_error(exc)
                log.exception("%s: %s failed", self.service, method.name)
                return encode_error(rid, Internal(f"{method.name}: {type(exc).__name__}: {exc}"))


class EventPublisher:
    """A daemon's PUB socket; publishing never blocks (slow subscribers drop)."""

    def __init__(self, service: str, config: Config) -> None:
        prepare_ipc_dir(config)
        address = config.events_address(service)
        _address_path(address).unlink(missing_ok=True)
        self._sock = pynng.Pub0()
        self._sock.listen(address)

    def publish(self, topic: str, payload: object) -> None:
        self._sock.send(encode_event(topic, payload))

    def close(self) -> None:
        self._sock.close()


class EventSubscriber:
    """Dials a daemon's PUB socket and keeps doing so across restarts of either side."""

    def __init__(self, service: str, config: Config, topics: tuple[str, ...] = ("",)) -> None:
        self.service = service
        self._sock = pynng.Sub0(
            recv_max_size=config.transport.max_message_bytes,
            reconnect_time_min=config.transport.reconnect_min_ms,
            reconnect_time_max=config.transport.reconnect_max_ms,
        )
        for topic in topics:
            self._sock.subscribe(topic.encode())
        self._pipes = _PipeWatch(self._sock, asyncio.get_running_loop())
        self._sock.dial(config.events_address(service), block=False)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Called on each (re)connection: the moment to resynchronise missed state."""
        self._pipes.on_connect.append(callback)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            try:
                data = await self._sock.arecv()
            except pynng.Closed:
                return
            try:
                yield decode_event(data)
            except Exception as exc:
                log.warning("%s: undecodable event dropped: %s", self.service, exc)

    def close(self) -> None:
        self._sock.close()
