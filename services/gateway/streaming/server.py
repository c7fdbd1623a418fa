"""streamd's HTTP server: one TCP connection per session, from the upgrade to the last frame.

Each connection runs as a task the server owns. Stopping the server (streamd's shutdown)
cancels them all: each ends its session cleanly (GOAWAY, then the connection closes, and
an exec'd command is killed), so a client sees its session end, while the container keeps
running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.gateway.streaming import handshake, websocket
from services.gateway.streaming.attach_session import run_attach
from services.gateway.streaming.connection import SpdySession
from services.gateway.streaming.exec_session import run_exec
from services.gateway.streaming.handshake import HttpRefusal
from services.gateway.streaming.port_forward_session import PROTOCOL as PORT_FORWARD_PROTOCOL
from services.gateway.streaming.port_forward_session import is_port_forward_stream, run_port_forward
from services.gateway.streaming.remotecommand import (
    PROTOCOLS as REMOTECOMMAND_PROTOCOLS,
)
from services.gateway.streaming.remotecommand import V1 as REMOTECOMMAND_V1
from services.gateway.streaming.remotecommand import V4 as REMOTECOMMAND_V4
from services.gateway.streaming.remotecommand import (
    Channels,
    SessionFailed,
    Wanted,
    collect_channels,
    is_remotecommand_stream,
    report,
)
from services.gateway.streaming.tokens import TokenCache
from shared.config import StreamdConfig
from shared.schema.streamd import AttachSession, ExecSession, PortForwardSession

log = logging.getLogger(__name__)

Prepared = ExecSession | AttachSession | PortForwardSession
_Reader = asyncio.StreamReader | websocket.WsByteStream
_Writer = asyncio.StreamWriter | websocket.WsByteStream
_KIND_OF = {ExecSession: "exec", AttachSession: "attach", PortForwardSession: "portforward"}


def kind_of(request: Prepared) -> str:
    return _KIND_OF[type(request)]


class StreamServer:
    def __init__(self, config: StreamdConfig, scratch_dir: Path) -> None:
        self._config = config
        self._scratch = scratch_dir
        self.tokens: TokenCache[Prepared] = TokenCache(config.token_ttl, config.max_tokens)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        scheme = "https" if self._config.tls_cert else "http"
        host = self._config.address
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def prepare(self, request: Prepared) -> str:
        token = self.tokens.insert(request)
        return f"{self.base_url}/{kind_of(request)}/{token}"

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        tls = None
        if self._config.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self._config.tls_cert, self._config.tls_key)
        self._server = await asyncio.start_server(self._accept, self._config.address, self._config.port, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server listening on %s", self.base_url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._connection(reader, writer))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("streaming connection lost: %s", exc)
        except Exception:
            log.exception("streaming connection failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = handshake.new_connection()
        try:
            incoming = await handshake.read_request(conn, reader)
            # A token is spent by any request naming it, as the kubelet's server does.
            prepared = self.tokens.consume(incoming.token)
            if prepared is None or kind_of(prepared) != incoming.kind:
                raise HttpRefusal(404, "404 page not found: unknown, expired or used token")
            if incoming.websocket:
                supported = (websocket.PORT_FORWARD_PROTOCOLS if incoming.kind == "portforward"
                             else websocket.REMOTECOMMAND_PROTOCOLS)
                protocol = handshake.negotiate_websocket(incoming, supported)
                channel_forward = incoming.kind == "portforward" and protocol != websocket.SPDY_TUNNEL
                ports = _query_ports(incoming) if channel_forward else ()
            else:
                supported = (PORT_FORWARD_PROTOCOL,) if incoming.kind == "portforward" else REMOTECOMMAND_PROTOCOLS
                protocol = handshake.negotiate(incoming, supported)
        except HttpRefusal as refusal:
            log.info("refusing a streaming request: %d %s", refusal.status, refusal.message)
            writer.write(handshake.refusal_bytes(conn, refusal))
            await writer.drain()
            return
        leftover = bytes(conn.trailing_data[0])
        if incoming.websocket:
            writer.write(handshake.websocket_upgrade_bytes(conn, incoming, protocol))
            await writer.drain()
            await self._serve_websocket(websocket.WebSocket(reader, writer, leftover), prepared, protocol, ports)
            return
        writer.write(handshake.upgrade_bytes(conn, protocol))
        await writer.drain()
        await self._serve_spdy(reader, writer, prepared, protocol, leftover)

    async def _serve_spdy(self, reader: _Reader, writer: _Writer, prepared: Prepared, protocol: str,
                          leftover: bytes = b"") -> None:
        accepts = is_port_forward_stream if isinstance(prepared, PortForwardSession) else is_remotecommand_stream
        session = SpdySession(reader, writer, idle_timeout=self._config.idle_timeout,  # type: ignore[arg-type]
                              accept_stream=accepts, initial=leftover)
        await self._run_session(session, self._work(session, prepared, protocol), prepared)

    async def _serve_websocket(self, ws: websocket.WebSocket, prepared: Prepared, protocol: str,
                               ports: tuple[int, ...]) -> None:
        if protocol == websocket.SPDY_TUNNEL:
            tunnel = websocket.WsByteStream(ws)
            await self._serve_spdy(tunnel, tunnel, prepared, PORT_FORWARD_PROTOCOL)
            return
        if isinstance(prepared, PortForwardSession):
            layout = websocket.port_forward_channels(ports)
        else:
            wanted = Wanted(prepared.stdin, prepared.stdout, prepared.stderr, prepared.tty)
            # The WebSocket subprotocols carry v4's stream set and its Status on the error channel.
            layout = websocket.remotecommand_channels(wanted.stream_types(REMOTECOMMAND_V4))
        session = websocket.WsChannelSession(ws, layout, idle_timeout=self._config.idle_timeout,
                                             half_close=protocol == websocket.V5,
                                             base64_codec=protocol in websocket.BASE64_PROTOCOLS)
        await self._run_session(session, self._work_over_channels(session, prepared, protocol), prepared)

    async def _run_session(self, session: SpdySession | websocket.WsChannelSession,
                           work: Coroutine[Any, Any, None], prepared: Prepared) -> None:
        serving = asyncio.create_task(session.serve())
        working = asyncio.create_task(work)
        try:
            await asyncio.wait({serving, working}, return_when=asyncio.FIRST_COMPLETED)
            if working.done():
                working.result()
                await session.finish()
            else:
                log.info("%s session for %s ended: %s", kind_of(prepared), _target(prepared), session.end_reason)
        finally:
            working.cancel()
            await asyncio.gather(working, return_exceptions=True)
            await session.close()
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    async def _work(self, session: SpdySession, prepared: Prepared, protocol: str) -> None:
        if isinstance(prepared, PortForwardSession):
            await run_port_forward(prepared, session)
            return
        wanted = Wanted(prepared.stdin, prepared.stdout, prepared.stderr, prepared.tty)
        try:
            channels = await collect_channels(session, protocol, wanted)
        except SessionFailed as exc:
            log.info("%s session for %s: %s", kind_of(prepared), prepared.container_id, exc)
            return
        await self._remote_command(prepared, channels)

    async def _work_over_channels(self, session: websocket.WsChannelSession, prepared: Prepared,
                                  protocol: str) -> None:
        if isinstance(prepared, PortForwardSession):
            # The kubelet opens each channel by writing its port on it.
            for number, channel in session.channels.items():
                await session.send(number, websocket.port_prefix(int(channel.headers["port"])))
            await run_port_forward(prepared, session)
            return
        await session.send(websocket.first_writable({c.id: c.headers for c in session.channels.values()}), b"")
        found = {channel.type: channel for channel in session.channels.values()}
        # Only the pre-v4 subprotocol (base64.channel.k8s.io here) keeps v1's plain error message.
        outcome = REMOTECOMMAND_V1 if protocol == websocket.BASE64 else REMOTECOMMAND_V4
        channels = Channels(outcome, **found)
        for channel in (channels.error, channels.stdout, channels.stderr):
            if channel is not None:
                channel.discard_input()
        await self._remote_command(prepared, channels)

    async def _remote_command(self, prepared: ExecSession | AttachSession, channels: Channels) -> None:
        try:
            if isinstance(prepared, ExecSession):
                await run_exec(prepared, channels, self._scratch)
            else:
                await run_attach(prepared, channels)
        except SessionFailed as exc:
            await report(channels, None, str(exc))
        except OSError as exc:
            log.warning("%s session for %s failed: %s", kind_of(prepared), prepared.container_id, exc)
            await report(channels, None, f"{kind_of(prepared)} failed: {exc}")


def _query_ports(request: handshake.StreamingRequest) -> tuple[int, ...]:
    """The kubelet's port-forward over WebSocket channels names its ports in the query."""
    if not request.ports:
        raise HttpRefusal(400, "port-forward over WebSocket channels needs at least one port query parameter")
    ports = []
    for text in request.ports:
        try:
            port = int(text)
        except ValueError:
            raise HttpRefusal(400, f"bad port {text[:20]!r}") from None
        if not 0 < port < 65536:
            raise HttpRefusal(400, f"port {port} out of range")
        ports.append(port)
    return tuple(ports)


def _target(prepared: Prepared) -> str:
    return prepared.sandbox_id if isinstance(prepared, PortForwardSession) else prepared.container_id
