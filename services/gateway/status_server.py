"""The status API's HTTP/1.1 server: h11 on an asyncio unix socket, `<run_dir>/status.sock`, 0600.

Not the CRI socket, as CRI-O does: grpcio's server owns that socket outright, and it has no
way to hand a non-gRPC connection to another protocol (no cmux). A socket of its own also gets
its own permissions: root only, since pause/unpause and the full config are an admin's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11

from services.gateway.status_api import StatusReply

log = logging.getLogger(__name__)

Router = Callable[[str, str], Awaitable[StatusReply]]

_MAX_REQUEST_BYTES = 64 * 1024  # requests carry no body worth more; a bigger one is refused
_IDLE_TIMEOUT_S = 30.0


def bind_status_socket(path: Path) -> socket.socket:
    """Bound and chmod'ed to 0600 before listen(), so no connection is accepted under wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve_status(path: Path, router: Router) -> None:
    """Serve until cancelled."""
    sock = bind_status_socket(path)
    server = await asyncio.start_unix_server(lambda r, w: _connection(r, w, router), sock=sock)
    log.info("serving the status API on unix://%s", path)
    try:
        async with server:
            await server.serve_forever()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, router: Router) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
    try:
        while True:
            request = await _next_request(conn, reader)
            if request is None:
                return
            started = time.monotonic()
            try:
                reply = await router(request.method.decode(), request.target.decode())
            except Exception as exc:  # one bad request must not take the server down
                log.exception("status API %s %s failed", request.method.decode(), request.target.decode())
                reply = StatusReply.error(500, f"internal error: {exc}")
            writer.write(_encode(conn, reply))
            await writer.drain()
            log.debug("status API %s %s -> %d (%.1f ms)", request.method.decode(), request.target.decode(),
                      reply.status, (time.monotonic() - started) * 1000)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
            writer.write(_encode(conn, StatusReply.error(exc.error_status_hint, f"bad request: {exc}")))
            await writer.drain()
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _next_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next request, with its body read and ignored (no route takes one); None at EOF."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(_IDLE_TIMEOUT_S):
                data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _encode(conn: h11.Connection, reply: StatusReply) -> bytes:
    headers = [("content-type", reply.content_type), ("content-length", str(len(reply.body)))]
    return b"".join((
        conn.send(h11.Response(status_code=reply.status, headers=headers)) or b"",
        conn.send(h11.Data(data=reply.body)) or b"",
        conn.send(h11.EndOfMessage()) or b"",
    ))
