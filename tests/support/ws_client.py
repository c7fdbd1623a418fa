"""A small WebSocket streaming client on wsproto that behaves like client-go's newer transports.

- `v5.channel.k8s.io` / `v4.channel.k8s.io` exec and attach: binary messages of one channel
  byte plus payload; v5 ends stdin with the CLOSE signal [255, 0]; the session ends when the
  server closes the WebSocket, the Status JSON having arrived on channel 3.
- `v4.base64.channel.k8s.io` / `base64.channel.k8s.io`: the same channels in text messages,
  the channel as an ASCII digit then the payload in base64 (client-go's old wsstream codec).
- `SPDY/3.1+portforward.k8s.io`: the SPDY client of spdy_client.py over the WebSocket, each
  write one binary message (client-go's TunnelingConnection).
- the kubelet's port-forward channels: per query port i, data 2i and error 2i+1, each first
  carrying the port as 2 bytes little-endian.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.parse
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from tests.support.spdy_client import ExecResult, SpdyClient, UpgradeRefused

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
CLOSE_SIGNAL = 255
BASE64_PROTOCOLS = ("v4.base64.channel.k8s.io", "base64.channel.k8s.io")


class WsClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: WSConnection,
                 protocol: str) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = ws
        self.protocol = protocol
        self._message = bytearray()
        self._text = ""
        self._ready: list[bytes] = []
        self.text_messages = 0
        self.binary_messages = 0
        self.closed = False
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, url: str, protocols: tuple[str, ...]) -> WsClient:
        parts = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        ws = WSConnection(ConnectionType.CLIENT)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        writer.write(ws.send(Request(host=parts.netloc, target=target, subprotocols=list(protocols))))
        await writer.drain()
        refused: RejectConnection | None = None
        body = b""
        while True:
            data = await reader.read(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    client = cls(reader, writer, ws, event.subprotocol or "")
                    client._collect(ws)  # frames that came with the 101
                    return client
                if isinstance(event, RejectConnection):
                    refused = event
                    if not event.has_body:
                        writer.close()
                        raise UpgradeRefused(event.status_code, b"", list(event.headers))
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished and refused is not None:
                        writer.close()
                        raise UpgradeRefused(refused.status_code, body, list(refused.headers))
            if not data:
                writer.close()
                raise ConnectionError("the server closed the connection during the upgrade")

    def _collect(self, ws: WSConnection) -> None:
        for event in ws.events():
            if isinstance(event, BytesMessage):
                self._message += event.data
                if event.message_finished:
                    self._ready.append(bytes(self._message))
                    self._message.clear()
                    self.binary_messages += 1
            elif isinstance(event, TextMessage):
                self._text += event.data
                if event.message_finished:
                    self._ready.append(self._text.encode())
                    self._text = ""
                    self.text_messages += 1
            elif isinstance(event, Ping):
                self.writer.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                with contextlib.suppress(Exception):
                    self.writer.write(ws.send(event.response()))
                self.closed = True

    async def receive(self) -> bytes | None:
        """The next whole binary message; None once the server closed."""
        while not self._ready:
            if self.closed:
                return None
            data = await self.reader.read(256 * 1024)
            try:
                self.ws.receive_data(data or None)
            except Exception:
                self.closed = True
                return None
            self._collect(self.ws)
        return self._ready.pop(0)

    def send_nowait(self, data: bytes | str) -> None:
        message = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        self.writer.write(self.ws.send(message))

    async def send(self, data: bytes | str) -> None:
        self.send_nowait(data)
        await self.writer.drain()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.closed:
                self.writer.write(self.ws.send(CloseConnection(code=1000)))
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# --- exec / attach over channels -------------------------------------------------------


@dataclass
class WsRemoteCommand:
    client: WsClient
    outputs: dict[int, bytearray] = field(default_factory=lambda: {STDOUT: bytearray(), STDERR: bytearray(),
                                                                   ERROR: bytearray()})
    first_empty: int | None = None

    @classmethod
    async def open(cls, url: str, protocols: tuple[str, ...] = ("v5.channel.k8s.io",)) -> WsRemoteCommand:
        return cls(await WsClient.connect(url, protocols))

    @property
    def base64(self) -> bool:
        return self.client.protocol in BASE64_PROTOCOLS

    async def send_on(self, channel: int, data: bytes) -> None:
        if self.base64:
            await self.client.send(chr(ord("0") + channel) + base64.b64encode(data).decode())
        else:
            await self.client.send(bytes((channel,)) + data)

    async def write_stdin(self, data: bytes) -> None:
        await self.send_on(STDIN, data)

    async def close_stdin(self) -> None:
        await self.client.send(bytes((CLOSE_SIGNAL, STDIN)))

    async def send_resize(self, width: int, height: int) -> None:
        # client-go writes each size with a json.Encoder: one line per message
        size = json.dumps({"Width": width, "Height": height}).encode() + b"\n"
        await self.send_on(RESIZE, size)

    async def read_until(self, channel: int, needle: bytes, timeout: float = 20.0) -> bytes:
        async with asyncio.timeout(timeout):
            while needle not in self.outputs[channel]:
                if not await self._pump():
                    break
        return bytes(self.outputs[channel])

    async def _pump(self) -> bool:
        message = await self.client.receive()
        if message is None:
            return False
        if self.base64 and message:
            message = bytes((message[0] - ord("0"),)) + base64.b64decode(message[1:], validate=True)
        if len(message) == 1 and self.first_empty is None:
            self.first_empty = message[0]
        if message and message[0] in self.outputs:
            self.outputs[message[0]] += message[1:]
        return True

    async def finish(self, timeout: float = 30.0) -> ExecResult:
        async with asyncio.timeout(timeout):
            while await self._pump():
                pass
        await self.client.close()
        return ExecResult(bytes(self.outputs[STDOUT]), bytes(self.outputs[STDERR]), bytes(self.outputs[ERROR]),
                          self.client.protocol)


# --- the SPDY tunnel -----------------------------------------------------------------------


class WsTunnel:
    """The reader/writer pair SpdyClient runs on, over a WebSocket carrying a byte stream."""

    def __init__(self, client: WsClient) -> None:
        self.client = client

    async def read(self, _n: int = -1) -> bytes:
        message = await self.client.receive()
        return message or b""

    def write(self, data: bytes) -> None:
        self.client.send_nowait(data)

    async def drain(self) -> None:
        await self.client.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.writer.write(self.client.ws.send(CloseConnection(code=1000)))
        self.client.writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.writer.wait_closed()


async def connect_spdy_tunnel(url: str) -> SpdyClient:
    client = await WsClient.connect(url, ("SPDY/3.1+portforward.k8s.io",))
    tunnel = WsTunnel(client)
    return SpdyClient(tunnel, tunnel, client.protocol, b"")  # type: ignore[arg-type]
