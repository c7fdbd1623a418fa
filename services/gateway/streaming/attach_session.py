"""Attach: the container's own stdio, through conmon's attach socket and control FIFO.

conmon (v2.1.6) listens on `<bundle>/attach`, a SOCK_SEQPACKET unix socket reached through
its `--socket-dir-path` symlink (the bundle path may not fit in sun_path). Each packet it
sends is one byte naming the pipe (2 = stdout, 3 = stderr) then up to 8 KiB of output;
whatever we send goes to the container's stdin, and our shutdown(SHUT_WR) closes that
stdin unless the container was created with stdin_once=false. A resize is the line
"1 <height> <width>\\n" on `<bundle>/ctl`. conmon closes the socket when the container exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from services.gateway.streaming.channel import Channel
from services.gateway.streaming.connection import StreamClosed
from services.gateway.streaming.remotecommand import Channels, SessionFailed, TerminalSize, report, terminal_sizes
from shared.schema.streamd import AttachSession

log = logging.getLogger(__name__)

_STDOUT, _STDERR = 2, 3
_PACKET_MAX = 64 * 1024
_BATCH = 256 * 1024


async def run_attach(request: AttachSession, channels: Channels) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        try:
            await loop.sock_connect(sock, request.attach_socket)
        except OSError as exc:
            raise SessionFailed(f"cannot attach to container {request.container_id}: {exc.strerror}") from None
        tasks = [asyncio.create_task(_copy_out(sock, channels))]
        if channels.stdin is not None:
            tasks.append(asyncio.create_task(_copy_in(channels.stdin, sock)))
        if channels.resize is not None:
            tasks.append(asyncio.create_task(_apply_resizes(channels.resize, request.ctl_fifo)))
        try:
            await tasks[0]  # conmon closes the socket when the container exits
        finally:
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)
    finally:
        sock.close()
    await report(channels, 0)


async def _copy_out(sock: socket.socket, channels: Channels) -> None:
    loop = asyncio.get_running_loop()
    while packet := await loop.sock_recv(sock, _PACKET_MAX):
        # conmon sends at most 8 KiB a packet: gather what is already queued for the same pipe
        # into one frame, so a fast writer costs one write and one drain per _BATCH, not per packet.
        target = _target_of(packet, channels)
        batch = [packet[1:]]
        size = len(packet) - 1
        while size < _BATCH:
            try:
                more = sock.recv(_PACKET_MAX, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                break
            if not more or _target_of(more, channels) is not target:
                break
            more = sock.recv(_PACKET_MAX)
            batch.append(more[1:])
            size += len(more) - 1
        if target is not None and size:
            with contextlib.suppress(StreamClosed):
                await target.write(b"".join(batch) if len(batch) > 1 else batch[0])


def _target_of(packet: bytes, channels: Channels) -> Channel | None:
    target = {_STDOUT: channels.stdout, _STDERR: channels.stderr}.get(packet[0])
    # stderr without a stderr stream (a tty merges it), or an unknown pipe
    return target if target is not None else channels.stdout


async def _copy_in(stream: Channel, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        while chunk := await stream.read():
            await loop.sock_sendall(sock, chunk)
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        log.info("attach stdin ended: %s", exc)


async def _apply_resizes(stream: Channel, ctl_fifo: str) -> None:
    async for size in terminal_sizes(stream):
        await asyncio.to_thread(write_resize, ctl_fifo, size)


def write_resize(ctl_fifo: str, size: TerminalSize) -> None:
    # O_NONBLOCK: if conmon is gone (no reader), the open fails with ENXIO instead of hanging.
    try:
        fd = os.open(ctl_fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        log.info("cannot resize through %s: %s", ctl_fifo, exc.strerror)
        return
    try:
        os.write(fd, f"1 {size.height} {size.width}\n".encode())
    except OSError as exc:
        log.info("cannot resize through %s: %s", ctl_fifo, exc.strerror)
    finally:
        os.close(fd)
