"""What a session's logic sees of its transport: channels it reads and writes, and a source of them.

Exec, attach and port-forward are written once against these. A channel is a SPDY stream
(connection.Stream) or one channel of a WebSocket connection (websocket.WsChannel); the
source is the SPDY session (streams as the client opens them) or the WebSocket channel
session (the fixed set the subprotocol defines, then the end).
"""

from __future__ import annotations

from typing import Protocol

from services.gateway.streaming import spdy


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
