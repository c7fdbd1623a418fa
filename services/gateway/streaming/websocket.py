"""Streaming sessions over WebSocket (RFC 6455, framed by wsproto), as newer clients speak them.

Two shapes, both ending in the channels the session logic already uses (channel.py):

- Channel subprotocols (`v5.channel.k8s.io`, `v4.channel.k8s.io`, and the kubelet's
  port-forward format): every binary message is one channel byte then payload. The channels
  are fixed by the subprotocol and the request, so they all exist from the start. Exec and
  attach use 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; port-forward uses, for the i-th
  `port` in the query, data 2i and error 2i+1, each opened by the server writing the port as
  2 bytes little-endian. v5 adds the message [255, channel], which half-closes that channel
  (how a v5 client ends stdin); a v4 client's stdin ends only with the connection.
  The base64 variants (`v4.base64.channel.k8s.io`, and `base64.channel.k8s.io`, whose error
  channel carries v1's plain message) send text messages instead: the channel as an ASCII
  digit ('0' + n), then the payload in standard base64. Clients may send either text or
  binary messages in that form, as the kubelet reads both.
  (apimachinery util/httpstream/wsstream, kubelet cri/streaming remotecommand/portforward.)
- `SPDY/3.1+portforward.k8s.io`: the whole SPDY session, its bytes carried in binary messages
  with no channel byte (client-go tools/portforward TunnelingConnection). `WsByteStream`
  makes that look like the reader/writer pair SpdySession runs on.

Frames are encoded and written in one synchronous step, as connection.py does, so writers
from many tasks never interleave inside a message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import struct
from collections.abc import Iterable
from typing import NamedTuple

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.frame_protocol import CloseReason

from services.gateway.streaming import spdy
from services.gateway.streaming.channel import IdleWatch, InboundChannel
from services.gateway.streaming.connection import StreamClosed

log = logging.getLogger(__name__)

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"
SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"
BASE64_PROTOCOLS = (V4_BASE64, BASE64)
# Binary first, as the offer in a refusal reads; the client's order picks among them.
REMOTECOMMAND_PROTOCOLS = (V5, V4, V4_BASE64, BASE64)
# "" is the kubelet's: a port-forward client that offers no subprotocol gets the channel format.
PORT_FORWARD_PROTOCOLS = (SPDY_TUNNEL, V4, V4_BASE64, "")

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE_SIGNAL = 255
_REMOTECOMMAND_CHANNELS = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}

_READ_SIZE = 256 * 1024
# A base64 message is decoded whole; client-go writes at most 32 KiB of payload in one.
_BASE64_MESSAGE_MAX = 4 * 1024 * 1024
_CLOSE_INVALID_PAYLOAD = 1007
_CLOSE_TOO_BIG = 1009


class Piece(NamedTuple):
    """Part of a received data message (text arrives as its UTF-8 bytes)."""

    data: bytes
    starts: bool  # the first piece of its message
    finished: bool  # the last piece of its message
    text: bool


def encode_base64(number: int, data: bytes) -> str:
    """One message of a base64 channel subprotocol: the channel as '0' + n, then the payload."""
    return chr(ord("0") + number) + base64.b64encode(data).decode("ascii")


def decode_base64(message: bytes) -> tuple[int, bytes]:
    """The channel and payload of a base64 channel message; ValueError if it is not one."""
    if not message:
        raise ValueError("an empty message names no channel")
    number = message[0] - ord("0")
    if number < 0:
        raise ValueError(f"{message[:1]!r} is not a channel digit")
    try:
        # Go's StdEncoding, which the kubelet decodes with, skips line breaks; nothing else.
        return number, base64.b64decode(message[1:].replace(b"\r", b"").replace(b"\n", b""), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64 on channel {number}: {exc}") from None


class WebSocket:
    """The server side of an accepted WebSocket: message payload in, binary or text messages out.

    Pings are answered and the closing handshake completed here, so callers see only data."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes = b"") -> None:
        self._reader = reader
        self._writer = writer
        self._ws = Connection(ConnectionType.SERVER)
        if initial:
            self._ws.receive_data(initial)
        self.ended = False
        self._in_message = False

    async def receive(self) -> list[Piece] | None:
        """The message payload that arrived next, in pieces; None at the end."""
        while not self.ended:
            pieces = self._drain_events()
            if pieces:
                return pieces
            if self.ended:
                break
            data = await self._reader.read(_READ_SIZE)
            self._ws.receive_data(data or None)
        return None

    def _drain_events(self) -> list[Piece]:
        pieces: list[Piece] = []
        for event in self._ws.events():
            match event:
                case BytesMessage(data=data, frame_finished=_, message_finished=finished):
                    pieces.append(Piece(data, self._starts_message(finished), finished, False))
                case TextMessage(data=text, frame_finished=_, message_finished=finished):
                    pieces.append(Piece(text.encode(), self._starts_message(finished), finished, True))
                case Ping():
                    self._write(self._ws.send(event.response()))
                case CloseConnection():
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        self._write(self._ws.send(event.response()))
                    self.ended = True
        return pieces

    def _starts_message(self, finished: bool) -> bool:
        starts = not self._in_message
        self._in_message = not finished
        return starts

    @property
    def open(self) -> bool:
        return self._ws.state is ConnectionState.OPEN

    def send_nowait(self, data: bytes | str) -> None:
        """One message: binary for bytes, text for str."""
        if not self.open:
            raise ConnectionError("the WebSocket is closed")
        self._write(self._ws.send(Message(data=data)))

    async def send(self, data: bytes | str) -> None:
        self.send_nowait(data)
        await self._writer.drain()

    async def drain(self) -> None:
        await self._writer.drain()

    def _write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        if self.open:
            with contextlib.suppress(Exception):
                self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
        self.ended = True
        self._writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)


class WsByteStream:
    """The reader and writer SpdySession expects, over a WebSocket whose binary messages carry
    a byte stream (the SPDY tunnel): each write is one message, reads concatenate messages."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._pending: list[bytes] = []

    async def read(self, _n: int = -1) -> bytes:
        if not self._pending:
            pieces = await self._ws.receive()
            if pieces is None:
                return b""
            self._pending = [piece.data for piece in pieces if not piece.text]
        data = b"".join(self._pending)
        self._pending = []
        return data

    def write(self, data: bytes) -> None:
        try:
            self._ws.send_nowait(data)
        except ConnectionError:
            raise
        except Exception as exc:  # wsproto refuses to send once closing
            raise ConnectionError(str(exc)) from None

    def writelines(self, chunks: Iterable[bytes]) -> None:
        # One message per SPDY frame; the header and its payload travel together.
        self.write(b"".join(chunks))

    async def drain(self) -> None:
        await self._ws.drain()

    def close(self) -> None:
        self._closing = asyncio.ensure_future(self._ws.close())

    async def wait_closed(self) -> None:
        closing = getattr(self, "_closing", None)
        if closing is not None:
            await closing


class WsChannel(InboundChannel):
    """One channel of a channel subprotocol, with the interface of a SPDY stream."""

    def __init__(self, session: WsChannelSession, number: int, headers: spdy.Headers) -> None:
        super().__init__(number, headers)
        self._session = session

    async def write(self, data: bytes, fin: bool = False) -> None:
        if self.local_closed or self._session.closed:
            raise StreamClosed(f"channel {self.id} is closed")
        if fin:
            self.local_closed = True
        try:
            await self._session.send(self.id, data)
        except ConnectionError as exc:
            raise StreamClosed(f"channel {self.id}: {exc}") from None

    async def close(self) -> None:
        # Nothing goes on the wire: the kubelet never half-closes an output channel, and a v4
        # client would read [255, n] as data. The connection's close ends them all.
        self.local_closed = True

    async def reset(self, status: spdy.RstStatus = spdy.RstStatus.CANCEL) -> None:
        self.was_reset = True
        self.local_closed = True
        self._remote_ended()


class WsChannelSession:
    """A WebSocket carrying numbered channels. `serve()` reads until the client leaves or the
    idle timeout passes; `accept()` hands out the channels, then None."""

    def __init__(self, ws: WebSocket, channels: dict[int, spdy.Headers], *, idle_timeout: float,
                 half_close: bool, base64_codec: bool = False) -> None:
        self._ws = ws
        self.channels = {number: WsChannel(self, number, headers) for number, headers in channels.items()}
        self._unaccepted = list(self.channels.values())
        self._half_close = half_close
        self._base64 = base64_codec
        self._message = bytearray()  # a base64 message, until its last piece
        self._idle = IdleWatch(idle_timeout)
        self._served = asyncio.Event()
        self._current: WsChannel | None = None
        self.closed = False
        self.end_reason = ""

    async def accept(self) -> WsChannel | None:
        return self._unaccepted.pop(0) if self._unaccepted else None

    async def send(self, number: int, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("the WebSocket session is closed")
        self._idle.touch()
        await self._ws.send(encode_base64(number, data) if self._base64 else bytes((number,)) + data)

    async def serve(self) -> None:
        watchdog = asyncio.create_task(self._idle.run(self._close_idle))
        try:
            while (pieces := await self._ws.receive()) is not None:
                self._idle.touch()
                for piece in pieces:
                    if self.closed:
                        break
                    if self._base64:
                        await self._dispatch_base64(piece)
                    elif not piece.text:  # text means nothing in the binary subprotocols
                        await self._dispatch(piece.data, piece.starts)
            self.end_reason = self.end_reason or "the client closed the connection"
        except (ConnectionError, TimeoutError) as exc:
            self.end_reason = self.end_reason or f"connection lost: {exc}"
        finally:
            watchdog.cancel()
            for channel in self.channels.values():
                channel._remote_ended()
            self._served.set()

    async def _dispatch(self, piece: bytes, starts: bool) -> None:
        if starts:
            if not piece:
                self._current = None
                return
            number, piece = piece[0], piece[1:]
            if number == CLOSE_SIGNAL and self._half_close:
                if piece and (channel := self.channels.get(piece[0])) is not None:
                    channel._remote_ended()
                self._current = None
                return
            self._current = self.channels.get(number)
            if self._current is None:
                log.info("ignoring a message on unknown channel %d", number)
        if self._current is not None:
            await self._current._deliver(piece)

    async def _dispatch_base64(self, piece: Piece) -> None:
        if piece.starts:
            self._message.clear()
        self._message += piece.data
        if len(self._message) > _BASE64_MESSAGE_MAX:
            self.end_reason = f"a base64 message over {_BASE64_MESSAGE_MAX} bytes"
            await self.close(_CLOSE_TOO_BIG, "message too big")
            return
        if not piece.finished:
            return
        message = bytes(self._message)
        self._message.clear()
        if not message:
            return  # the kubelet skips empty messages
        try:
            number, data = decode_base64(message)
        except ValueError as exc:
            # The kubelet stops reading the connection at a message it cannot decode.
            self.end_reason = f"undecodable base64 message: {exc}"
            await self.close(_CLOSE_INVALID_PAYLOAD, "invalid base64 channel message")
            return
        channel = self.channels.get(number)
        if channel is None:
            log.info("ignoring a message on unknown channel %d", number)
            return
        await channel._deliver(data)

    async def _close_idle(self, reason: str) -> None:
        self.end_reason = reason
        await self.close()

    async def finish(self, grace: float = 2.0) -> None:
        """The work is done: close the WebSocket (the client reads to the close, as client-go does)."""
        del grace  # the close handshake is the client's cue; nothing to wait for before it
        await self.close()

    async def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        for channel in self.channels.values():
            channel._remote_ended()
        await self._ws.close(code, reason)


def remotecommand_channels(wanted_types: set[str]) -> dict[int, spdy.Headers]:
    return {_REMOTECOMMAND_CHANNELS[kind]: {"streamtype": kind} for kind in wanted_types}


def first_writable(channels: dict[int, spdy.Headers]) -> int:
    """The channel the kubelet writes an empty message on to tell the client the session is up."""
    return min(n for n in (STDOUT, STDERR, ERROR) if n in channels)


def port_forward_channels(ports: tuple[int, ...]) -> dict[int, spdy.Headers]:
    channels: dict[int, spdy.Headers] = {}
    for index, port in enumerate(ports):
        pair = {"port": str(port), "requestid": str(index)}
        channels[2 * index] = {**pair, "streamtype": "data"}
        channels[2 * index + 1] = {**pair, "streamtype": "error"}
    return channels


def port_prefix(port: int) -> bytes:
    return struct.pack("<H", port)
