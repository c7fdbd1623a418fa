"""A small SPDY/3.1 streaming client that behaves like client-go's, built on criplex's framing core.

CI has no crictl, so the end-to-end tests drive streamd with this: the HTTP upgrade with
X-Stream-Protocol-Version, client (odd) stream ids, waiting for each SYN_REPLY before the
next stream, FIN half-closes, PINGs, and the remotecommand/portforward stream layouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import h11

from services.gateway.streaming import spdy

EXEC_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("portforward.k8s.io",)


class UpgradeRefused(Exception):
    def __init__(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(f"HTTP {status}: {body.decode(errors='replace').strip()}")
        self.status = status
        self.body = body
        self.headers = headers


@dataclass
class ClientStream:
    client: SpdyClient
    id: int
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    inbound: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    ended: bool = False
    reset_status: int | None = None

    async def write(self, data: bytes) -> None:
        await self.client.send_raw(b"".join(spdy.FrameWriter.data(self.id, data)))

    async def close(self) -> None:
        await self.client.send_raw(b"".join(spdy.FrameWriter.data(self.id, b"", True)))

    async def read(self) -> bytes:
        if self.ended:
            return b""
        chunk = await self.inbound.get()
        if chunk is None:
            self.ended = True
            return b""
        return chunk

    async def read_all(self) -> bytes:
        out = bytearray()
        while chunk := await self.read():
            out += chunk
        return bytes(out)


class SpdyClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str,
                 leftover: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.frames = spdy.FrameReader()
        self.frames.feed(leftover)
        self.encoder = spdy.FrameWriter()
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.pongs: dict[int, asyncio.Event] = {}
        self.goaway: spdy.GoAway | None = None
        self.closed = asyncio.Event()
        self.received: list[spdy.Frame] = []
        self._task = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, url: str, protocols: tuple[str, ...], method: str = "POST",
                      upgrade: str = "SPDY/3.1") -> SpdyClient:
        parts = urllib.parse.urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", parts.netloc), ("Connection", "Upgrade"), ("Upgrade", upgrade), ("Content-Length", "0")]
        headers += [("X-Stream-Protocol-Version", p) for p in protocols]
        writer.write(conn.send(h11.Request(method=method, target=parts.path, headers=headers)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection during the upgrade")
                conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                chosen = dict(event.headers).get(b"x-stream-protocol-version", b"").decode()
                leftover, _ = conn.trailing_data
                return cls(reader, writer, chosen, bytes(leftover))
            elif isinstance(event, h11.Response):
                body = b""
                while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                writer.close()
                raise UpgradeRefused(event.status_code, body, list(event.headers))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, frame: spdy.Frame) -> None:
        await self.send_raw(self.encoder.encode(frame))

    async def open_stream(self, headers: dict[str, str], timeout: float = 10.0) -> ClientStream:
        stream = ClientStream(self, self.next_id)
        self.next_id += 2
        self.streams[stream.id] = stream
        await self.send(spdy.SynStream(stream.id, headers))
        async with asyncio.timeout(timeout):
            await stream.replied.wait()
        if stream.reset_status is not None:
            raise ConnectionError(f"stream {stream.id} was reset ({stream.reset_status})")
        return stream

    async def ping(self, ping_id: int = 1, timeout: float = 5.0) -> None:
        self.pongs[ping_id] = asyncio.Event()
        await self.send(spdy.Ping(ping_id))
        async with asyncio.timeout(timeout):
            await self.pongs[ping_id].wait()

    async def _read_loop(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.frames.feed(data)
                for frame in self.frames.frames():
                    self.received.append(frame)
                    self._dispatch(frame)
        except (ConnectionError, spdy.SessionError):
            pass
        finally:
            for stream in self.streams.values():
                stream.inbound.put_nowait(None)
                stream.replied.set()
            self.closed.set()

    def _dispatch(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.SynReply(stream_id):
                if stream_id in self.streams:
                    self.streams[stream_id].replied.set()
            case spdy.DataFrame(stream_id, data, fin):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    if data:
                        stream.inbound.put_nowait(data)
                    if fin:
                        stream.inbound.put_nowait(None)
            case spdy.RstStream(stream_id, status):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.reset_status = status
                    stream.replied.set()
                    stream.inbound.put_nowait(None)
            case spdy.Ping(ping_id):
                if ping_id in self.pongs:
                    self.pongs[ping_id].set()
            case spdy.GoAway():
                self.goaway = frame

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    error: bytes
    protocol: str

    @property
    def status(self) -> dict[str, Any]:
        return json.loads(self.error) if self.error else {}

    @property
    def exit_code(self) -> int:
        status = self.status
        if status.get("status") == "Success":
            return 0
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        raise AssertionError(f"no exit code in {status}")


@dataclass
class RemoteCommand:
    """An exec/attach session opened the way client-go v4 opens one."""

    client: SpdyClient
    error: ClientStream
    stdin: ClientStream | None
    stdout: ClientStream | None
    stderr: ClientStream | None
    resize: ClientStream | None

    @classmethod
    async def open(cls, url: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True,
                   tty: bool = False, protocols: tuple[str, ...] = EXEC_PROTOCOLS) -> RemoteCommand:
        client = await SpdyClient.connect(url, protocols)
        streams: dict[str, ClientStream | None] = {}
        for kind, wanted in (("error", True), ("stdin", stdin), ("stdout", stdout), ("stderr", stderr and not tty),
                             ("resize", tty and client.protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io"))):
            streams[kind] = await client.open_stream({"streamtype": kind}) if wanted else None
        error = streams.pop("error")
        assert error is not None
        return cls(client, error, **streams)

    async def send_resize(self, width: int, height: int) -> None:
        assert self.resize is not None
        await self.resize.write(json.dumps({"Width": width, "Height": height}).encode() + b"\n")

    async def finish(self, timeout: float = 30.0) -> ExecResult:
        async with asyncio.timeout(timeout):
            outputs = await asyncio.gather(*(s.read_all() if s else _nothing() for s in (self.stdout, self.stderr)))
            error = await self.error.read_all()
        await self.client.close()
        return ExecResult(outputs[0], outputs[1], error, self.client.protocol)


async def _nothing() -> bytes:
    return b""


async def run_exec(url: str, stdin: bytes | None = None, tty: bool = False, timeout: float = 30.0) -> ExecResult:
    session = await RemoteCommand.open(url, stdin=stdin is not None, tty=tty)
    if stdin is not None:
        assert session.stdin is not None
        await session.stdin.write(stdin)
        await session.stdin.close()
    return await session.finish(timeout)


async def forward_once(client: SpdyClient, request_id: int, port: int, payload: bytes,
                       timeout: float = 20.0) -> tuple[bytes, bytes]:
    """One forwarded connection as client-go makes it: error stream (half-closed at once), then data."""
    headers = {"streamtype": "error", "port": str(port), "requestid": str(request_id)}
    error = await client.open_stream(headers)
    await error.close()
    data = await client.open_stream({**headers, "streamtype": "data"})
    if payload:
        await data.write(payload)
    await data.close()
    async with asyncio.timeout(timeout):
        received = await data.read_all()
        message = await error.read_all()
    return received, message
