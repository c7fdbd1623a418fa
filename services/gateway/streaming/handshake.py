"""The HTTP/1.1 half of a streaming session: the request, the route, and the upgrade to SPDY/3.1 or WebSocket.

h11 parses and checks the HTTP; this decides. Routes are the kubelet streaming server's:
GET or POST on /exec/<token>, /attach/<token>, /portforward/<token>. The client offers its
subprotocols in `X-Stream-Protocol-Version` headers, in its order of preference, and the
server picks the first it supports; with none it answers 403 listing what it accepts in
`X-Accepted-Stream-Protocol-Versions` (apimachinery util/httpstream Handshake). The 101
names the choice, and from then on the connection carries SPDY frames. A WebSocket upgrade
(RFC 6455) offers its subprotocols in `Sec-WebSocket-Protocol` instead, and the connection
then carries WebSocket frames (websocket.py).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

import h11
from wsproto.utilities import generate_accept_token

KINDS = ("exec", "attach", "portforward")
_HEAD_TIMEOUT_S = 30.0
_MAX_HEAD_BYTES = 64 * 1024


class HttpRefusal(Exception):
    """Answer with this status and message, then close."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class StreamingRequest:
    kind: str
    token: str
    upgrade: str  # the Upgrade header, lowercased
    protocols: tuple[str, ...]  # X-Stream-Protocol-Version values, in the client's order
    websocket_protocols: tuple[str, ...] = ()  # Sec-WebSocket-Protocol values, in the client's order
    websocket_key: str = ""
    websocket_version: str = ""
    ports: tuple[str, ...] = ()  # the query's `port` values (port-forward over WebSocket channels)

    @property
    def websocket(self) -> bool:
        return self.upgrade == "websocket"


async def read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> StreamingRequest:
    """The request head and its (empty) body; HttpRefusal for anything that is not a streaming request."""
    request: h11.Request | None = None
    try:
        async with asyncio.timeout(_HEAD_TIMEOUT_S):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and request is None:
                        raise HttpRefusal(400, "the connection closed before a request")
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    raise HttpRefusal(400, "a streaming request has no body")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise HttpRefusal(400, "the connection closed mid-request")
    except TimeoutError:
        raise HttpRefusal(408, f"no complete request within {_HEAD_TIMEOUT_S:g}s") from None
    except h11.RemoteProtocolError as exc:
        raise HttpRefusal(exc.error_status_hint, f"bad HTTP request: {exc}") from None
    assert request is not None
    return parse_request(request)


def parse_request(request: h11.Request) -> StreamingRequest:
    if request.method not in (b"GET", b"POST"):
        raise HttpRefusal(405, f"method {request.method.decode(errors='replace')} is not allowed",
                          (("Allow", "GET, POST"),))
    target = request.target.decode(errors="replace")
    path, _, query = target.partition("?")
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != "" or parts[1] not in KINDS or not parts[2]:
        raise HttpRefusal(404, f"404 page not found: {path[:100]}")
    upgrade = ""
    protocols: list[str] = []
    ws_protocols: list[str] = []
    ws_key = ws_version = ""
    for name, value in request.headers:
        text = value.decode(errors="replace")
        if name == b"upgrade":
            upgrade = text.lower()
        elif name == b"x-stream-protocol-version":
            protocols += [p.strip() for p in text.split(",") if p.strip()]
        elif name == b"sec-websocket-protocol":
            ws_protocols += [p.strip() for p in text.split(",") if p.strip()]
        elif name == b"sec-websocket-key":
            ws_key = text.strip()
        elif name == b"sec-websocket-version":
            ws_version = text.strip()
    ports = tuple(value for name, value in urllib.parse.parse_qsl(query) if name == "port")
    return StreamingRequest(parts[1], parts[2], upgrade, tuple(protocols), tuple(ws_protocols), ws_key, ws_version,
                            ports)


def negotiate(request: StreamingRequest, supported: tuple[str, ...]) -> str:
    """The first protocol the client offers that the server supports, or HttpRefusal."""
    if "spdy/3.1" not in request.upgrade:
        raise HttpRefusal(400, f"unable to upgrade: the streaming server speaks SPDY/3.1 or WebSocket, not "
                               f"{request.upgrade or 'plain HTTP'!r}")
    if not request.protocols:
        raise HttpRefusal(400, "unable to upgrade: X-Stream-Protocol-Version is required")
    for protocol in request.protocols:
        if protocol in supported:
            return protocol
    raise HttpRefusal(
        403, f"unable to upgrade: unable to negotiate protocol: client supports {list(request.protocols)}, "
             f"server accepts {list(supported)}",
        tuple(("X-Accepted-Stream-Protocol-Versions", p) for p in supported))


def negotiate_websocket(request: StreamingRequest, supported: tuple[str, ...]) -> str:
    """The first subprotocol the client offers that the server supports ("" when the client offers
    none and "" is supported), or HttpRefusal naming the accepted ones."""
    if request.websocket_version != "13" or not request.websocket_key:
        raise HttpRefusal(400, "unable to upgrade: a WebSocket upgrade needs Sec-WebSocket-Version 13 and a "
                               "Sec-WebSocket-Key", (("Sec-WebSocket-Version", "13"),))
    offered = request.websocket_protocols or ("",)
    for protocol in offered:
        if protocol in supported:
            return protocol
    named = [p for p in supported if p]
    raise HttpRefusal(
        403, f"unable to upgrade: unable to negotiate a WebSocket subprotocol: client offers "
             f"{list(request.websocket_protocols)}, server accepts {named}",
        tuple(("Sec-WebSocket-Protocol", p) for p in named))


def refusal_bytes(conn: h11.Connection, refusal: HttpRefusal) -> bytes:
    body = (refusal.message + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
               ("Connection", "close"), *refusal.headers]
    try:
        return (conn.send(h11.Response(status_code=refusal.status, headers=headers))
                + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    except h11.LocalProtocolError:
        # h11 is in an error state (the request was unparseable): write the answer by hand.
        fresh = h11.Connection(h11.SERVER)
        fresh.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        fresh.next_event()
        return (fresh.send(h11.Response(status_code=refusal.status, headers=headers))
                + fresh.send(h11.Data(data=body)) + fresh.send(h11.EndOfMessage()))


def upgrade_bytes(conn: h11.Connection, protocol: str) -> bytes:
    return conn.send(h11.InformationalResponse(status_code=101, headers=[
        ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", protocol)]))


def websocket_upgrade_bytes(conn: h11.Connection, request: StreamingRequest, protocol: str) -> bytes:
    headers = [("Connection", "Upgrade"), ("Upgrade", "websocket"),
               ("Sec-WebSocket-Accept", generate_accept_token(request.websocket_key.encode()).decode())]
    if protocol:
        headers.append(("Sec-WebSocket-Protocol", protocol))
    return conn.send(h11.InformationalResponse(status_code=101, headers=headers))


def new_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
