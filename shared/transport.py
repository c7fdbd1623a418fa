"""nng transport between the gateway and the daemons.

Request/reply uses nng's REQ/REP protocols in *raw* mode, driven from the asyncio
event loop through the sockets' pollable descriptors (NNG_OPT_RECVFD/SENDFD) with
non-blocking sends and receives. Why:
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

nng is not fork-safe: daemons start children only with fork+exec (asyncio
subprocesses), never a bare fork. Every socket sets a maximum message size.

Pub/sub: a daemon publishes on its own PUB socket; subscribers dial, and are told
each time their pipe (re)connects so they can resynchronise what they missed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pynng
from pynng._nng import ffi, lib

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

# How long a call waits for a pipe that is not there yet: about one reconnect
# interval, so a daemon that just came back is reached and a dead one fails fast.
_CONNECT_GRACE_S = 0.3
# Messages nng may queue per socket.
_QUEUE_DEPTH = 1024


def prepare_ipc_dir(config: Config) -> None:
    """Create the ipc directory root-only: its permissions are the sockets' access control."""
    path = config.ipc_dir
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise Internal(f"{path} must be owned by uid {os.getuid()} with mode 0700")


def _listen(sock: pynng.Socket, address: str) -> None:
    # A socket file left by a killed daemon would make the listen fail.
    Path(address.removeprefix("ipc://")).unlink(missing_ok=True)
    sock.listen(address)


class _LoopSocket:
    """A raw nng socket driven from the event loop thread.

    Receives poll the socket's RECVFD and drain with non-blocking nng_recvmsg.
    Sends are submitted as nng aios without a callback and reaped later: a
    synchronous send waits for nng's own threads (≈100 µs), and a callback would
    run Python on an nng thread.
    """

    _REAP_INTERVAL_S = 0.5

    def __init__(self, sock: pynng.Socket, on_message: Callable[[bytes, bytes], None]) -> None:
        self._sock = sock
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._recv_fd = sock.recv_fd
        self._sending: collections.deque[Any] = collections.deque()
        self._reaper: asyncio.TimerHandle | None = None
        self._paused = False
        self._loop.add_reader(self._recv_fd, self._readable)

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._loop.remove_reader(self._recv_fd)

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._loop.add_reader(self._recv_fd, self._readable)
            self._loop.call_soon(self._readable)

    def _readable(self) -> None:
        msg_p = ffi.new("nng_msg **")
        while not self._paused:
            rv = lib.nng_recvmsg(self._sock.socket, msg_p, lib.NNG_FLAG_NONBLOCK)
            if rv == lib.NNG_EAGAIN:
                return
            if rv != 0:
                self._loop.remove_reader(self._recv_fd)
                return
            msg = msg_p[0]
            header = bytes(ffi.buffer(lib.nng_msg_header(msg), lib.nng_msg_header_len(msg)))
            body = bytes(ffi.buffer(lib.nng_msg_body(msg), lib.nng_msg_len(msg)))
            lib.nng_msg_free(msg)
            self._on_message(header, body)

    def send(self, header: bytes, body: bytes) -> None:
        msg_p = ffi.new("nng_msg **")
        aio_p = ffi.new("nng_aio **")
        if lib.nng_msg_alloc(msg_p, 0) != 0 or lib.nng_aio_alloc(aio_p, ffi.NULL, ffi.NULL) != 0:
            raise Internal("nng: out of memory")
        msg, aio = msg_p[0], aio_p[0]
        lib.nng_msg_header_append(msg, header, len(header))
        lib.nng_msg_append(msg, body, len(body))
        lib.nng_aio_set_msg(aio, msg)
        lib.nng_send_aio(self._sock.socket, aio)
        self._sending.append(aio)
        self._reap()

    def cancel_sends(self) -> None:
        """Withdraw messages nng has not delivered yet (their peer is gone)."""
        for aio in self._sending:
            lib.nng_aio_cancel(aio)
        self._reap()

    def _reap(self) -> None:
        self._reaper = None
        while self._sending and not lib.nng_aio_busy(self._sending[0]):
            aio = self._sending.popleft()
            if lib.nng_aio_result(aio) != 0:
                # Not delivered: nng leaves the message with us.
                msg = lib.nng_aio_get_msg(aio)
                if msg != ffi.NULL:
                    lib.nng_msg_free(msg)
            lib.nng_aio_free(aio)
        if self._sending and self._reaper is None:
            self._reaper = self._loop.call_later(self._REAP_INTERVAL_S, self._reap)

    def close(self) -> None:
        self._loop.remove_reader(self._recv_fd)
        if self._reaper is not None:
            self._reaper.cancel()
        for aio in self._sending:
            lib.nng_aio_stop(aio)  # cancels and waits: the aio is idle after this
            msg = lib.nng_aio_get_msg(aio) if lib.nng_aio_result(aio) != 0 else ffi.NULL
            if msg != ffi.NULL:
                lib.nng_msg_free(msg)
            lib.nng_aio_free(aio)
        self._sending.clear()


class _PipeWatch:
    """Counts a socket's pipes and tells the event loop when they come and go.

    nng calls pipe callbacks on its own threads; everything here hops onto the loop.
    """

    def __init__(self, sock: pynng.Socket) -> None:
        self.count = 0
        self.connected = asyncio.Event()
        self.on_connect: list[Callable[[], None]] = []
        self.on_remove: list[Callable[[], None]] = []
        loop = asyncio.get_running_loop()
        sock.add_post_pipe_connect_cb(lambda _pipe: self._hop(loop, self._added))
        sock.add_post_pipe_remove_cb(lambda _pipe: self._hop(loop, self._removed))

    @staticmethod
    def _hop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(fn)

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
        self._sock = pynng.Socket(
            opener=lib.nng_req0_open_raw,
            recv_max_size=config.transport.max_message_bytes,
            send_buffer_size=_QUEUE_DEPTH,
            recv_buffer_size=_QUEUE_DEPTH,
            reconnect_time_min=config.transport.reconnect_min_ms,
            reconnect_time_max=config.transport.reconnect_max_ms,
        )
        self._pipes = _PipeWatch(self._sock)
        self._pipes.on_remove.append(self._fail_pending)
        self._io = _LoopSocket(self._sock, self._on_reply)
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        # REQ request ids have the high bit set (nng's wire format for REQ/REP).
        self._ids = (0x80000000 | (n & 0x7FFFFFFF) for n in itertools.count(int.from_bytes(os.urandom(3))))
        self._sock.dial(config.ipc_address(service), block=False)

    @property
    def connected(self) -> bool:
        return self._pipes.count > 0

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._pipes.on_connect.append(callback)

    def _on_reply(self, header: bytes, body: bytes) -> None:
        future = self._pending.get(header[-4:])
        if future is not None and not future.done():
            future.set_result(body)

    def _fail_pending(self) -> None:
        # Our only pipe went away with every request in flight: they will never be
        # answered, and raw REQ will not resend them to a restarted daemon.
        if self.connected:
            return
        self._io.cancel_sends()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"{self.service} went away during the call"))

    async def call(self, method: Method[Req, Resp], args: Req, timeout: float | None = None) -> Resp:
        """Call `method` on the daemon; raise its typed error, Unavailable or DeadlineExceeded."""
        timeout = self._default_timeout if timeout is None else timeout
        with self._tracing.client_span(f"{self.service}/{method.name}"):
            if not self.connected:
                try:
                    await asyncio.wait_for(self._pipes.connected.wait(), min(timeout, _CONNECT_GRACE_S))
                except TimeoutError:
                    raise Unavailable(f"{self.service} is not running (no connection)") from None
            request_id = next(self._ids).to_bytes(4, "big")
            payload = encode_request(method, time.time() + timeout, self._tracing.traceparent(), args)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[bytes] = loop.create_future()
            # A timer on the future itself: cheaper than an asyncio.timeout scope per call.
            timer = loop.call_later(timeout, _expire, future, self.service, method.name, timeout)
            self._pending[request_id] = future
            try:
                self._io.send(request_id, payload)
                body = await future
            finally:
                timer.cancel()
                del self._pending[request_id]
            return decode_response(body, method)

    def close(self) -> None:
        self._io.close()
        self._sock.close()


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
        self._io: _LoopSocket | None = None

    def register(self, method: Method[Req, Resp], handler: Callable[[Req], Awaitable[Resp]]) -> None:
        if method.name in self._handlers:
            raise ValueError(f"{method.name} registered twice")
        self._handlers[method.name] = (method, handler)

    async def serve(self) -> None:
        """Listen and serve until cancelled."""
        prepare_ipc_dir(self._config)
        address = self._config.ipc_address(self.service)
        sock = pynng.Socket(opener=lib.nng_rep0_open_raw, recv_max_size=self._config.transport.max_message_bytes,
                            send_buffer_size=_QUEUE_DEPTH, recv_buffer_size=_QUEUE_DEPTH)
        _listen(sock, address)
        self._io = _LoopSocket(sock, self._on_request)
        log.info("%s serving on %s", self.service, address)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._io.close()
            for task in list(self._tasks):
                task.cancel()
            sock.close()

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
        reply = await self._execute(body)
        if self._io is not None:
            self._io.send(header, reply)

    async def _execute(self, body: bytes) -> bytes:
        try:
            request = decode_request(body)
        except CriplexError as exc:
            return encode_error(exc)
        entry = self._handlers.get(request.method)
        if entry is None:
            return encode_error(Unimplemented(f"{self.service} has no method {request.method!r}"))
        method, handler = entry
        with self._tracing.server_span(f"{self.service}/{method.name}", request.traceparent):
            try:
                args = parse(method.request, request.args, method.name)
                remaining = request.deadline - time.time() if request.deadline else None
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(f"{method.name}: deadline passed before it started")
                async with asyncio.timeout(remaining):
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


class EventPublisher:
    """A daemon's PUB socket; publishing never blocks (nng drops for slow subscribers)."""

    def __init__(self, service: str, config: Config) -> None:
        prepare_ipc_dir(config)
        self._sock = pynng.Pub0()
        _listen(self._sock, config.events_address(service))

    def publish(self, topic: str, payload: object) -> None:
        self._sock.send(encode_event(topic, payload), block=False)

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
        self._pipes = _PipeWatch(self._sock)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=10000)
        self._io = _LoopSocket(self._sock, self._on_event)
        self._sock.dial(config.events_address(service), block=False)

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Called on each (re)connection: the moment to resynchronise missed state."""
        self._pipes.on_connect.append(callback)

    def _on_event(self, _header: bytes, body: bytes) -> None:
        if self._queue.full():
            log.warning("%s: event queue full, dropping an event", self.service)
            return
        self._queue.put_nowait(body)

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        while True:
            data = await self._queue.get()
            try:
                yield decode_event(data)
            except Exception as exc:
                log.warning("%s: undecodable event dropped: %s", self.service, exc)

    def close(self) -> None:
        self._io.close()
        self._sock.close()
