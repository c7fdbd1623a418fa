"""nng sockets driven from the asyncio loop thread, with no Python ever running on an nng thread.

Shared by the request/reply transport (`shared.transport`) and the events (`shared.events`):
receives poll the socket's RECVFD and drain with non-blocking `nng_recvmsg`; sends are
callback-less nng aios reaped later; pipe arrivals and departures hop onto the loop.
"""

from __future__ import annotations

import asyncio
import collections
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynng
from pynng._nng import ffi, lib

from shared.config import Config
from shared.errors import Internal

# Messages nng may queue per socket.
QUEUE_DEPTH = 1024


def prepare_ipc_dir(config: Config) -> None:
    """Create the ipc directory root-only: its permissions are the sockets' access control."""
    path = config.ipc_dir
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    st = path.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise Internal(f"{path} must be owned by uid {os.getuid()} with mode 0700")


def listen(sock: pynng.Socket, address: str) -> None:
    # A socket file left by a killed daemon would make the listen fail.
    Path(address.removeprefix("ipc://")).unlink(missing_ok=True)
    sock.listen(address)


class LoopSocket:
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


class PipeWatch:
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
