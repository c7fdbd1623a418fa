"""Port forwarding (portforward.k8s.io): each forwarded connection is a pair of streams.

For every connection it accepts locally, the client opens an `error` stream then a `data`
stream, both with headers `port` and `requestid`; it half-closes the error stream at once
and reads it to its end, reporting anything written there. The server pairs the two by
requestid (30 s to get both), dials localhost:port inside the pod's network namespace,
and copies. A failed dial is a message on that error stream: the session goes on.
When the pod side closes, the pair ends, as the kubelet's does. (client-go
tools/portforward/portforward.go handleConnection; kubelet cri/streaming/portforward.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from services.gateway.streaming import spdy
from services.gateway.streaming.channel import Channel, ChannelSource
from services.gateway.streaming.connection import StreamClosed
from services.gateway.streaming.netns_dial import dial_localhost
from shared.schema.streamd import PortForwardSession

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
_PAIR_TIMEOUT_S = 30.0
_READ_SIZE = 64 * 1024


def is_port_forward_stream(headers: spdy.Headers) -> bool:
    return headers.get("streamtype", "") in ("error", "data")


@dataclass
class _Pair:
    port: int
    error: Channel | None = None
    data: Channel | None = None
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


async def run_port_forward(request: PortForwardSession, session: ChannelSource) -> None:
    pending: dict[str, _Pair] = {}
    async with asyncio.TaskGroup() as group:
        while (stream := await session.accept()) is not None:
            key, port, problem = _identify(stream)
            if problem:
                log.info("refusing a port-forward stream: %s", problem)
                await stream.reset(spdy.RstStatus.PROTOCOL_ERROR)
                continue
            pair = pending.get(key)
            if pair is None:
                pair = pending[key] = _Pair(port)
                pair.expiry = asyncio.get_running_loop().call_later(
                    _PAIR_TIMEOUT_S, lambda k=key: group.create_task(_expire(pending, k)))
            if getattr(pair, stream.type) is not None or pair.port != port:
                await stream.reset(spdy.RstStatus.PROTOCOL_ERROR)
                continue
            setattr(pair, stream.type, stream)
            if pair.error is not None and pair.data is not None:
                del pending[key]
                if pair.expiry is not None:
                    pair.expiry.cancel()
                group.create_task(_forward(request.netns_path, pair.port, pair.error, pair.data))
        for pair in pending.values():
            if pair.expiry is not None:
                pair.expiry.cancel()


def _identify(stream: Channel) -> tuple[str, int, str]:
    """(pairing key, port, problem)."""
    if not is_port_forward_stream(stream.headers):
        return "", 0, f"unknown stream type {stream.type!r:.40}"
    try:
        port = int(stream.headers.get("port", ""))
    except ValueError:
        return "", 0, f"bad port header {stream.headers.get('port', '')!r:.40}"
    if not 0 < port < 65536:
        return "", 0, f"port {port} out of range"
    request_id = stream.headers.get("requestid", "")
    if not request_id:
        # Old clients send no requestid: the kubelet pairs an error stream with the data
        # stream opened right after it (client stream ids go up by 2).
        request_id = str(stream.id if stream.type == "error" else stream.id - 2)
    return request_id, port, ""


async def _expire(pending: dict[str, _Pair], key: str) -> None:
    pair = pending.pop(key, None)
    if pair is None:
        return
    log.info("port-forward request %s: the client did not open both streams in %gs", key, _PAIR_TIMEOUT_S)
    for stream in (pair.error, pair.data):
        if stream is not None:
            await stream.reset(spdy.RstStatus.CANCEL)


async def _forward(netns_path: str, port: int, error: Channel, data: Channel) -> None:
    error.discard_input()
    try:
        sock = await dial_localhost(netns_path, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        message = f"failed to connect to localhost:{port} inside the pod's network namespace: {reason}"
        log.info("port-forward: %s", message)
        with contextlib.suppress(StreamClosed):
            await error.write(message.encode())
        await error.close()
        await data.close()
        return
    try:
        to_pod = asyncio.create_task(_client_to_pod(data, sock))
        try:
            await _pod_to_client(sock, data)
        except OSError as exc:
            # As the kubelet does: a forwarding that breaks is reported on the error stream.
            message = f"error forwarding port {port}: {exc.strerror or exc}"
            log.info("port-forward: %s", message)
            with contextlib.suppress(StreamClosed):
                await error.write(message.encode())
        finally:
            to_pod.cancel()
            await asyncio.gather(to_pod, return_exceptions=True)
    finally:
        sock.close()
        await data.close()
        await error.close()


async def _client_to_pod(data: Channel, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        while chunk := await data.read():
            await loop.sock_sendall(sock, chunk)
        sock.shutdown(socket.SHUT_WR)  # the client is done sending: the pod sees end of input


async def _pod_to_client(sock: socket.socket, data: Channel) -> None:
    """Copy until the pod side closes; a reset by the pod raises OSError, a client gone ends it."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(StreamClosed):
        while chunk := await loop.sock_recv(sock, _READ_SIZE):
            await data.write(chunk)
