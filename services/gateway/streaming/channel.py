"""What a session's logic sees of its transport: channels it reads and writes, and a source of them.

Exec, attach and port-forward are written once against these. A channel is a SPDY stream
(connection.Stream) or one channel of a WebSocket connection (websocket.WsChannel); the
source is the SPDY session (streams as the client opens them) or the WebSocket channel
session (the fixed set the subprotocol defines, then the end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.gateway.streaming import spdy

log = logging.getLogger(__name__)

_INBOUND_CHUNKS = 64  # per channel; client-go writes at most 32 KiB a frame


class IdleWatch:
    """When a session last carried traffic; `run` ends the session once it has been idle too long."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._last = time.monotonic()

    def touch(self) -> None:
        self._last = time.monotonic()

    async def run(self, close: Callable[[str], Awaitable[None]]) -> None:
        """Until idle for `timeout` seconds; then `close(reason)`."""
        while True:
            remaining = self._last + self.timeout - time.monotonic()
            if remaining <= 0:
                log.info("closing a streaming session idle for %g s", self.timeout)
                await close(f"idle for {self.timeout:g} s")
                return
            await asyncio.sleep(remaining)


class Channel(Protocol):
    id: int
    headers: spdy.Headers
    local_closed: bool
    was_reset: bool

    @property
    def type(self) -> str: ...

    async def read(self) -> bytes: ...

    async def read_all(self, limit: int) -> bytes: ...

    async def write(self, data: bytes, fin: bool = False) -> None: ...

    async def close(self) -> None: ...

    async def reset(self, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None: ...

    def discard_input(self) -> None: ...


class ChannelSource(Protocol):
    async def accept(self) -> Channel | None: ...


class InboundChannel:
    """What the client sends on one channel, queued for the session's reader: the half both
    transports share. Subclasses add how writes, half-closes and resets reach the wire."""

    def __init__(self, number: int, headers: spdy.Headers) -> None:
        self.id = number
        self.headers = headers
        self._inbound: asyncio.Queue[bytes | None] = asyncio.Queue(_INBOUND_CHUNKS)
        self._remote_done = False  # the reader has seen the end
        self._end_pushed = False  # the transport has queued the end
        self._discard = False
        self.local_closed = False
        self.was_reset = False

    @property
    def type(self) -> str:
        return self.headers.get("streamtype", "")

    async def read(self) -> bytes:
        """The next chunk the client sent; b"" once it half-closed, reset, or went away."""
        if self._remote_done and self._inbound.empty():
            return b""
        chunk = await self._inbound.get()
        if chunk is None:
            self._remote_done = True
            return b""
        return chunk

    async def read_all(self, limit: int) -> bytes:
        data = bytearray()
        while chunk := await self.read():
            data += chunk
            if len(data) > limit:
                break
        return bytes(data)

    def discard_input(self) -> None:
        """Nothing will read this channel (stdout, error): drop what the client sends on it,
        rather than let it fill the queue and stall the whole session."""
        self._discard = True
        while not self._inbound.empty():
            self._inbound.get_nowait()
        if self._end_pushed:
            self._remote_done = True

    # --- called by the session's reader -----------------------------------------------

    async def _deliver(self, data: bytes) -> None:
        if data and not self._discard and not self._end_pushed:
            await self._inbound.put(data)

    def _remote_ended(self) -> None:
        if self._end_pushed:
            return
        self._end_pushed = True
        try:
            self._inbound.put_nowait(None)
        except asyncio.QueueFull:
            self._remote_done = True  # a reader drains what is queued, then sees the end
