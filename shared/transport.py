"""nng request/reply between the gateway and the daemons.

Request/reply uses nng's REQ/REP protocols in *raw* mode, driven from the asyncio
event loop through the sockets' pollable descriptors (`shared.nngio`). Why:
- Cooked REQ resends an outstanding request when its pipe goes away, so a
  CreateContainer could run twice on a restarted daemon. Raw REQ never resends:
  when the pipe to a daemon is removed, the client fails every call in flight at
  once with UNAVAILABLE, and a daemon never sees a request twice.
- pynng's asyncio adapter completes every operation through a Python callback on
  an nng thread; the GIL hand-offs that causes cost hundreds of microseconds per
  call. Polling descriptors keeps every Python line on the loop thread.
- Raw REP lets one socket hold any number of requests at once; each runs as its
  own task (bounded by `transport.workers`) and replies carry the request's
  backtrace header, so answers may leave in any order.

Each daemon listens on two sockets. The main one carries its methods and stops being
read while `transport.workers` requests run, so further requests wait in nng, not in
memory. The control one (`<service>.control.sock`) carries only `health` and
cancellations and is never paused: a daemon busy with slow calls still answers its
health, and a cancellation reaches a handler even when the daemon reads no new work.

Cancellation crosses the hop: every request carries a call id (the client's random
token and the request id). When the caller's task is cancelled, or its timeout expires,
the client sends `$cancel` naming that id, and the daemon cancels the handler's task, or,
if the request is still queued, drops it unanswered when it arrives.

nng is not fork-safe: daemons start children only with fork+exec (asyncio
subprocesses), never a bare fork. Every socket sets a maximum message size.

Pub/sub is in `shared.events` (re-exported here).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pynng
from pynng._nng import lib

from shared.config import Config
from shared.errors import (
    CriplexError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from shared.events import EventPublisher, EventSubscriber
from shared.histogram import Histogram
from shared.nngio import QUEUE_DEPTH, LoopSocket, PipeWatch, listen, prepare_ipc_dir
from shared.schema.common import HEALTH, METRICS, SPANS
from shared.tracing import Tracing, record_error
from shared.wire import (
    Method,
    Request,
    decode_request,
    decode_response,
    encode_error,
    encode_request,
    encode_response,
    parse,
)

__all__ = ["CANCEL", "CancelRequest", "DaemonClient", "DaemonServer", "EventPublisher", "EventSubscriber",
           "control_address", "prepare_ipc_dir"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True)
class CancelRequest:
    """Stop the call the same client sent with this call id; answered by no reply."""

    call: bytes


CANCEL = Method("$cancel", CancelRequest, CancelRequest)

# Methods that travel the control lane when the daemon has one: a scrape or a trace query must
# be answered by a daemon whose workers are all busy, that is when it matters most.
_CONTROL_METHODS = frozenset({HEALTH.name, METRICS.name, SPANS.name})
# Control-lane requests running at once; past that they are refused, never queued: the lane
# must stay readable.
_CONTROL_WORKERS = 64
# Cancellations of requests not seen yet, kept until the request's deadline; at most this many.
_TOMBSTONES = 4096
# The least time a call waits for a pipe that is not there yet (see connect_grace).
_MIN_CONNECT_GRACE_S = 0.3


def control_address(config: Config, service: str) -> str:
    return config.ipc_address(f"{service}.control")


def connect_grace(config: Config) -> float:
    """How long a call waits for a missing pipe: past one redial interval, so a daemon that just
    came back is reached and a dead one fails fast."""
    return max(_MIN_CONNECT_GRACE_S, 1.5 * config.transport.reconnect_max_ms / 1000)


class _Lane:
    """One REQ socket of a client, with the calls waiting for their replies on it."""

    def __init__(self, service: str, address: str, config: Config) -> None:
        self.service = service
        self.sock = pynng.Socket(
            opener=lib.nng_req0_open_raw,
            recv_max_size=config.transport.max_message_bytes,
            send_buffer_size=QUEUE_DEPTH,
            recv_buffer_size=QUEUE_DEPTH,
            reconnect_time_min=config.transport.reconnect_min_ms,
            reconnect_time_max=config.transport.reconnect_max_ms,
        )
        self.pipes = PipeWatch(self.sock)
        self.pipes.on_remove.append(self._fail_pending)
        self.io = LoopSocket(self.sock, self._on_reply)
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self.sock.dial(address, block=False)

    def _on_reply(self, header: bytes, body: bytes) -> None:
        future = self.pending.get(header[-4:])
        if future is not None and not future.done():
            future.set_result(body)

    def _fail_pending(self) -> None:
        # Our only pipe went away with every request in flight: they will never be
        # answered, and raw REQ will not resend them to a restarted daemon.
        if self.pipes.count > 0:
            return
        self.io.cancel_sends()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"{self.service} went away during the call"))

    def close(self) -> None:
        self.io.close()
        self.sock.close()


class DaemonClient:
    """The gateway's handle on one daemon: typed calls with deadlines, fail-fast and cancellation."""

    def __init__(self, service: str, config: Config, tracing: Tracing) -> None:
        self.service = service
        self._tracing = tracing
        self._default_timeout = config.gateway.default_timeout
        self._connect_grace = connect_grace(config)
        self._main = _Lane(service, config.ipc_address(service), config)
        self._control = _Lane(service, control_address(config, service), config)
        # A call id is this token and the request id: unique across the daemon's clients.
        self._token = os.urandom(8)
        # REQ request ids have the high bit set (nng's wire format for REQ/REP).
        self._ids = (0x80000000 | (n & 0x7FFFFFFF) for n in itertools.count(int.from_bytes(os.urandom(3))))
        # Metrics on: the hop latency of each method, and calls in flight (for /metrics).
        self.hops: dict[str, Histogram] | None = {} if config.metrics.enable else None
        self.inflight = 0

    def record_hops(self, on: bool) -> None:
        """Start or stop recording hop latencies (a reload turned metrics on or off)."""
        if on != (self.hops is not None):
            self.hops = {} if on else None

    @property
    def connected(self) -> bool:
        return self._main.pipes.count > 0

    @property
    def control_connected(self) -> bool:
        """Whether the daemon's control lane (health, cancellations) is connected; an older daemon has none."""
        return self._control.pipes.count > 0

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._main.pipes.on_connect.append(callback)

    async def call(self, method: Method[Req, Resp], args: Req, timeout: float | None = None) -> Resp:
        """Call `method` on the daemon; raise its typed error, Unavailable or DeadlineExceeded.

        If the calling task is cancelled or the timeout expires, the daemon's handler is cancelled too.
        """
        timeout = self._default_timeout if timeout is None else timeout
        hops = self.hops
        if hops is None:
            return await self._call(method, args, timeout)
        started = time.perf_counter()
        self.inflight += 1
        try:
            return await self._call(method, args, timeout)
        finally:
            self.inflight -= 1
            hop = hops.get(method.name)
            if hop is None:
                hop = hops[method.name] = Histogram()
            hop.observe(time.perf_counter() - started)

    async def _call(self, method: Method[Req, Resp], args: Req, timeout: float) -> Resp:
        with self._tracing.client_span(f"{self.service}/{method.name}"):
            if not self.connected:
                try:
                    await asyncio.wait_for(self._main.pipes.connected.wait(), min(timeout, self._connect_grace))
                except TimeoutError:
                    raise Unavailable(f"{self.service} is not running (no connection)") from None
            lane = self._main
            # A daemon of an older version has no control lane: its health goes the main way.
            if method.name in _CONTROL_METHODS and self._control.pipes.count > 0:
                lane = self._control
            request_id = next(self._ids).to_bytes(4, "big")
            call_id = self._token + request_id
            deadline = time.time() + timeout
            payload = encode_request(method, deadline, self._tracing.traceparent(), args, call_id)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[bytes] = loop.create_future()
            # A timer on the future itself: cheaper than an asyncio.timeout scope per call.
            timer = loop.call_later(timeout, _expire, future, self.service, method.name, timeout)
            lane.pending[request_id] = future
            try:
                lane.io.send(request_id, payload)
                body = await future
            except (asyncio.CancelledError, DeadlineExceeded):
                self._cancel(call_id, deadline)
                raise
            finally:
                timer.cancel()
                del lane.pending[request_id]
            return decode_response(body, method)

    def _cancel(self, call_id: bytes, deadline: float) -> None:
        # The control lane is read even when the daemon's workers are all busy; without it
        # (an older daemon, or one going away), the main lane still reaches an idle daemon.
        lane = self._control if self._control.pipes.count > 0 else self._main
        if lane.pipes.count == 0:
            return
        lane.io.send(next(self._ids).to_bytes(4, "big"),
                     encode_request(CANCEL, deadline, "", CancelRequest(call_id)))

    def close(self) -> None:
        self._main.close()
        self._control.close()


def _expire(future: asyncio.Future[bytes], service: str, method: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"{service} did not answer {method} in {timeout:.3g}s"))


class DaemonServer:
    """Serves a daemon's `Method`s on its ipc socket, each request in its own task."""

    def __init__(self, service: str, config: Config, tracing: Tracing) -> None:
        self.service = service
        self._config = config
        self._tracing = tracing
        self._handlers: dict[str, tuple[Method[Any, Any], Handler]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._running: dict[bytes, asyncio.Task[Any]] = {}
        self._deadlines: dict[bytes, asyncio.Timeout] = {}  # of the running calls that have one
        # Call id -> deadline of cancellations that arrived before their request.
        self._tombstones: dict[bytes, float] = {}
        self._io: LoopSocket | None = None
        self._control_io: LoopSocket | None = None

    def register(self, method: Method[Req, Resp], handler: Callable[[Req], Awaitable[Resp]]) -> None:
        if method.name in self._handlers or method.name == CANCEL.name:
            raise ValueError(f"{method.name} registered twice or reserved")
        self._handlers[method.name] = (method, handler)

    async def serve(self) -> None:
        """Listen and serve until cancelled."""
        prepare_ipc_dir(self._config)
        address = self._config.ipc_address(self.service)
        sock = self._rep_socket()
        control = self._rep_socket()
        try:
            listen(sock, address)
            listen(control, control_address(self._config, self.service))
            self._io = LoopSocket(sock, self._on_request)
            self._control_io = LoopSocket(control, self._on_control)
            log.info("%s serving on %s", self.service, address)
            await asyncio.Future()  # until cancelled
        finally:
            for io in (self._io, self._control_io):
                if io is not None:
                    io.close()
            for task in [*self._tasks, *self._control_tasks]:
                task.cancel()
            sock.close()
            control.close()

    def _rep_socket(self) -> pynng.Socket:
        return pynng.Socket(opener=lib.nng_rep0_open_raw, recv_max_size=self._config.transport.max_message_bytes,
                            send_buffer_size=QUEUE_DEPTH, recv_buffer_size=QUEUE_DEPTH)

    def _on_request(self, header: bytes, body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(header, body))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if len(self._tasks) >= self._config.transport.workers and self._io is not None:
            self._io.pause()  # backpressure: let requests wait in nng, not in memory

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if len(self._tasks) < self._config.transport.workers and self._io is not None:
            self._io.resume()

    async def _answer(self, header: bytes, body: bytes) -> None:
        try:
            request = decode_request(body)
        except CriplexError as exc:
            reply: bytes | None = encode_error(exc)
        else:
            reply = await self._dispatch(request)
        if reply is not None and self._io is not None:
            self._io.send(header, reply)

    def _on_control(self, header: bytes, body: bytes) -> None:
        # Runs inline on every message, and never pauses: this lane must always be read.
        assert self._control_io is not None
        try:
            request = decode_request(body)
        except CriplexError as exc:
            self._control_io.send(header, encode_error(exc))
            return
        if request.method == CANCEL.name:
            self._cancel(request)
        elif request.method not in _CONTROL_METHODS:
            self._control_io.send(header, encode_error(FailedPrecondition(
                f"{request.method!r} does not travel {self.service}'s control lane")))
        elif len(self._control_tasks) >= _CONTROL_WORKERS:
            self._control_io.send(header, encode_error(ResourceExhausted(
                f"{self.service}: too many control requests at once")))
        else:
            task = asyncio.get_running_loop().create_task(self._answer_control(header, request))
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)

    async def _answer_control(self, header: bytes, request: Request) -> None:
        reply = await self._dispatch(request)
        if reply is not None and self._control_io is not None:
            self._control_io.send(header, reply)

    def _cancel(self, request: Request) -> None:
        try:
            call = parse(CancelRequest, request.args, CANCEL.name).call
        except CriplexError as exc:
            log.warning("%s: bad cancellation ignored: %s", self.service, exc.message)
            return
        task = self._running.get(call)
        if task is not None:
            # A handler is cancelled once: a second cancellation would land in its cleanup (monitord
            # kills an exec'd command there). So a handler its deadline already cancelled is left
            # alone, and one cancelled here no longer has a deadline to fire.
            if not task.cancelling():
                log.debug("%s: a call is cancelled by its caller", self.service)
                deadline = self._deadlines.get(call)
                if deadline is not None:
                    deadline.reschedule(None)
                task.cancel()
            return
        # Not running: answered already, or still waiting in nng behind busy workers.
        if len(self._tombstones) >= _TOMBSTONES:
            now = time.time()
            self._tombstones = {c: d for c, d in self._tombstones.items() if d > now}
            while len(self._tombstones) >= _TOMBSTONES:
                del self._tombstones[next(iter(self._tombstones))]
        self._tombstones[call] = request.deadline

    async def _dispatch(self, request: Request) -> bytes | None:
        """Run one request; None means it was cancelled by its caller and gets no reply."""
        if request.method == CANCEL.name:  # an older client's, or one without a control lane
            self._cancel(request)
            return None
        entry = self._handlers.get(request.method)
        if entry is None:
            return encode_error(Unimplemented(f"{self.service} has no method {request.method!r}"))
        call = request.call
        if call:
            if self._tombstones and self._tombstones.pop(call, None) is not None:
                log.debug("%s: %s cancelled before it started", self.service, request.method)
                return None
            task = asyncio.current_task()
            assert task is not None
            self._running[call] = task
        try:
            return await self._execute(request, *entry)
        finally:
            if call:
                self._running.pop(call, None)
                self._deadlines.pop(call, None)

    async def _execute(self, request: Request, method: Method[Any, Any], handler: Handler) -> bytes:
        with self._tracing.server_span(f"{self.service}/{method.name}", request.traceparent):
            try:
                args = parse(method.request, request.args, method.name)
                remaining = request.deadline - time.time() if request.deadline else None
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(f"{method.name}: deadline passed before it started")
                async with asyncio.timeout(remaining) as deadline:
                    if request.call and remaining is not None:
                        self._deadlines[request.call] = deadline
                    result = await handler(args)
                return encode_response(result)
            except CriplexError as exc:
                record_error(exc)
                return encode_error(exc)
            except TimeoutError as exc:
                record_error(exc)
                return encode_error(DeadlineExceeded(f"{method.name} ran past its deadline"))
            except Exception as exc:
                record_error(exc)
                log.exception("%s: %s failed", self.service, method.name)
                return encode_error(Internal(f"{method.name}: {type(exc).__name__}: {exc}"))
