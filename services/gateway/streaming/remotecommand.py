"""The remotecommand subprotocol shared by exec and attach (channel.k8s.io, v2 to v4).

The client opens one SPDY stream per channel, typed by the `streamtype` header: `error`
first, then `stdin`, `stdout`, `stderr` (not with a tty) and, from v3, `resize` (only with
a tty). The server waits for exactly the streams the request asked for, then copies. At
the end the error stream carries the outcome: from v4 a `metav1.Status` JSON (Success, or
Failure with reason NonZeroExitCode and an ExitCode cause); before v4 a plain message, and
only on failure. (client-go tools/remotecommand v2.go..v4.go, errorstream.go.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.gateway.streaming import spdy
from services.gateway.streaming.channel import Channel, ChannelSource
from services.gateway.streaming.connection import StreamClosed

log = logging.getLogger(__name__)

V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)  # preference order, as the kubelet's server lists them
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")

_STREAMS_TIMEOUT_S = 30.0  # the kubelet's stream creation timeout
_RESIZE_LINE_MAX = 4096


class SessionFailed(Exception):
    """The session cannot start or go on; the message goes to the client on the error stream."""


@dataclass(frozen=True)
class Wanted:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    def stream_types(self, protocol: str) -> set[str]:
        types = {"error"}
        if self.stdin:
            types.add("stdin")
        if self.stdout:
            types.add("stdout")
        # v1 clients open stderr even with a tty; later ones do not (the tty merges it).
        if self.stderr and (not self.tty or protocol == V1):
            types.add("stderr")
        if self.tty and protocol in (V3, V4):
            types.add("resize")
        return types


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


@dataclass
class Channels:
    protocol: str
    error: Channel
    stdin: Channel | None = None
    stdout: Channel | None = None
    stderr: Channel | None = None
    resize: Channel | None = None

    def all(self) -> list[Channel]:
        return [s for s in (self.error, self.stdin, self.stdout, self.stderr, self.resize) if s is not None]


def is_remotecommand_stream(headers: spdy.Headers) -> bool:
    return headers.get("streamtype", "") in STREAM_TYPES


async def collect_channels(session: ChannelSource, protocol: str, wanted: Wanted,
                           timeout: float = _STREAMS_TIMEOUT_S) -> Channels:
    expected = wanted.stream_types(protocol)
    found: dict[str, Channel] = {}
    try:
        async with asyncio.timeout(timeout):
            while set(found) != expected:
                stream = await session.accept()
                if stream is None:
                    raise SessionFailed("the client went away before opening its streams")
                if stream.type not in expected or stream.type in found:
                    log.info("refusing an unexpected %r stream", stream.type)
                    await stream.reset(spdy.RstStatus.PROTOCOL_ERROR)
                    continue
                found[stream.type] = stream
    except TimeoutError:
        missing = ", ".join(sorted(expected - set(found)))
        raise SessionFailed(f"timed out after {timeout:g}s waiting for the client's streams ({missing})") from None
    channels = Channels(protocol, **found)
    # Nobody reads what a client might send on these.
    for stream in (channels.error, channels.stdout, channels.stderr):
        if stream is not None:
            stream.discard_input()
    return channels


def exit_status(exit_code: int) -> bytes:
    """The v4 Status for a command's exit (apimachinery metav1.Status, remotecommand constants)."""
    if exit_code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code & 0xFF)}]},
    }).encode()


def failure_status(message: str) -> bytes:
    return json.dumps({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
                       "code": 500}).encode()


async def report(channels: Channels, exit_code: int | None, message: str = "") -> None:
    """Half-close the output streams, then write the outcome on the error stream and close it:
    client-go waits for stdout and stderr to end before it reads the error stream to its end."""
    for stream in (channels.stdout, channels.stderr, channels.stdin, channels.resize):
        if stream is not None:
            await stream.close()
    if channels.protocol == V4:
        payload = exit_status(exit_code) if exit_code is not None else failure_status(message)
    elif exit_code:
        payload = f"command terminated with non-zero exit code: exit status {exit_code}".encode()
    elif exit_code is None:
        payload = message.encode()
    else:
        payload = b""
    try:
        if payload:
            await channels.error.write(payload)
        await channels.error.close()
    except StreamClosed:
        pass


async def terminal_sizes(stream: Channel) -> AsyncIterator[TerminalSize]:
    """The sizes the client sends: one JSON object per line, `{"Width": w, "Height": h}`
    (client-go's TerminalSize has no json tags, so the keys are capitalised)."""
    pending = b""
    while chunk := await stream.read():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _RESIZE_LINE_MAX:
            log.warning("dropping an overlong resize message")
            pending = b""
        for line in lines:
            size = _parse_size(line)
            if size is not None:
                yield size
    size = _parse_size(pending)
    if size is not None:
        yield size


def _parse_size(line: bytes) -> TerminalSize | None:
    if not line.strip():
        return None
    try:
        message = json.loads(line)
        width, height = int(message["Width"]), int(message["Height"])
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed resize message %r", line[:100])
        return None
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        log.warning("ignoring an out-of-range terminal size %dx%d", width, height)
        return None
    return TerminalSize(width, height)
