"""The HTTP/1.1 half of a streaming session: the request, the route, and the upgrade to SPDY/3.1.

h11 parses and checks the HTTP; this decides. Routes are the kubelet streaming server's:
GET or POST on /exec/<token>, /attach/<token>, /portforward/<token>. The client offers its
subprotocols in `X-Stream-Protocol-Version` headers, in its order of preference, and the
server picks the first it supports; with none it answers 403 listing what it accepts in
`X-Accepted-Stream-Protocol-Versions` (apimachinery util/httpstream Handshake). The 101
names the choice, and from then on the connection carries SPDY frames.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11

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
    path = request.target.split(b"?", 1)[0].decode(errors="replace")
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != "" or parts[1] not in KINDS or not parts[2]:
        raise HttpRefusal(404, f"404 page not found: {path[:100]}")
    upgrade = ""
    protocols: list[str] = []
    for name, value in request.headers:
        if name == b"upgrade":
            upgrade = value.decode(errors="replace").lower()
        elif name == b"x-stream-protocol-version":
            protocols += [p.strip() for p in value.decode(errors="replace").split(",") if p.strip()]
    return StreamingRequest(parts[1], parts[2], upgrade, tuple(protocols))


def negotiate(request: StreamingRequest, supported: tuple[str, ...]) -> str:
    """The first protocol the client offers that the server supports, or HttpRefusal."""
    if "spdy/3.1" not in request.upgrade:
        raise HttpRefusal(400, f"unable to upgrade: the streaming server speaks SPDY/3.1, not "
                               f"{request.upgrade or 'plain HTTP'!r} (WebSocket is not supported yet)")
    if not request.protocols:
        raise HttpRefusal(400, "unable to upgrade: X-Stream-Protocol-Version is required")
    for protocol in request.protocols:
        if protocol in supported:
            return protocol
    raise HttpRefusal(
        403, f"unable to upgrade: unable to negotiate protocol: client supports {list(request.protocols)}, "
             f"server accepts {list(supported)}",
        tuple(("X-Accepted-Stream-Protocol-Versions", p) for p in supported))


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


def new_connection() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
