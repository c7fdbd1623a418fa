"""Exec: run a command in a container through the OCI runtime, as a child of streamd.

`<runtime> --root R exec [--tty] --pid-file P <id> <cmd...>` stays in the foreground for
the whole command and exits with its status (CRI-O's streaming exec does the same, without
conmon). With a tty, the runtime's stdio is the slave side of a pty we open: runc puts
its own stdin in raw mode, makes the container's console, and copies both ways; a resize is
TIOCSWINSZ on our master plus SIGWINCH to runc, which then copies that size onto the
container's console (the pty is not runc's controlling terminal, so the kernel would not
signal it). Without a tty, plain pipes.

The command never outlives its session: if the client goes away, or streamd stops, the
exec'd process (its pid from --pid-file) is killed and the runtime reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import struct
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.gateway.streaming.channel import Channel
from services.gateway.streaming.connection import StreamClosed
from services.gateway.streaming.remotecommand import Channels, TerminalSize, report, terminal_sizes
from shared.fdio import read_fd, write_fd
from shared.schema.streamd import ExecSession

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
# After the command ends, its own background children may still hold the output open.
_DRAIN_GRACE_S = 1.0
_REAP_GRACE_S = 10.0
_PID_FILE_POLL_S = 0.01
# Clients send the size at once; a loaded machine (CI's 2 busy cores) can still take a moment.
_FIRST_SIZE_WAIT_S = 5.0


def exec_argv(request: ExecSession, pid_file: Path) -> list[str]:
    return [request.runtime.path, f"--root={request.runtime.root}", "exec", *(["--tty"] if request.tty else []),
            "--pid-file", str(pid_file), request.container_id, *request.cmd]


def exit_code_of(returncode: int) -> int:
    # A runtime killed by a signal reports as a shell would: 128 + the signal number.
    return returncode if returncode >= 0 else 128 - returncode


async def run_exec(request: ExecSession, channels: Channels, scratch_dir: Path) -> None:
    pid_file = scratch_dir / f"exec-{secrets.token_hex(8)}.pid"
    proc: asyncio.subprocess.Process | None = None
    try:
        if request.tty:
            proc = await _run_with_tty(request, channels, pid_file)
        else:
            proc = await _run_with_pipes(request, channels, pid_file)
        assert proc.returncode is not None
        await report(channels, exit_code_of(proc.returncode))
    finally:
        if proc is not None and proc.returncode is None:
            await _stop(proc, pid_file)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)


async def _run_with_pipes(request: ExecSession, channels: Channels, pid_file: Path) -> asyncio.subprocess.Process:
    pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    proc = await _start_runtime(
        exec_argv(request, pid_file), pid_file, stdin=pipe if channels.stdin else null,
        stdout=pipe if channels.stdout else null, stderr=pipe if channels.stderr else null)
    outputs = []
    if channels.stdout is not None:
        assert proc.stdout is not None
        outputs.append(asyncio.create_task(_copy_out(proc.stdout, channels.stdout)))
    if channels.stderr is not None:
        assert proc.stderr is not None
        outputs.append(asyncio.create_task(_copy_out(proc.stderr, channels.stderr)))
    feeding = None
    if channels.stdin is not None:
        assert proc.stdin is not None
        feeding = asyncio.create_task(_copy_in(channels.stdin, proc.stdin))
    try:
        await proc.wait()
        if outputs:
            await asyncio.wait(outputs, timeout=_DRAIN_GRACE_S)
    finally:
        for task in [*outputs, *([feeding] if feeding else [])]:
            task.cancel()
        if proc.returncode is None:
            await _stop(proc, pid_file)
    return proc


async def _copy_out(source: asyncio.StreamReader, stream: Channel) -> None:
    with contextlib.suppress(StreamClosed):
        while chunk := await source.read(_READ_SIZE):
            await stream.write(chunk)


async def _copy_in(stream: Channel, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await stream.read():
            sink.write(chunk)
            await sink.drain()
    except (BrokenPipeError, ConnectionResetError):
        return
    sink.close()  # the client half-closed stdin: the command sees end of input


async def _run_with_tty(request: ExecSession, channels: Channels, pid_file: Path) -> asyncio.subprocess.Process:
    master, slave = os.openpty()
    sizes = terminal_sizes(channels.resize) if channels.resize is not None else None
    if sizes is not None:
        # runc sizes the container's console from its stdin when it starts, and client-go sends
        # the terminal's size first thing: wait briefly for it, or a command that asks at once
        # (stty size, a full-screen program) would see 0x0 before the SIGWINCH lands.
        with contextlib.suppress(TimeoutError, StopAsyncIteration):
            resize_pty(master, await asyncio.wait_for(anext(sizes), _FIRST_SIZE_WAIT_S))
    try:
        proc = await _start_runtime(exec_argv(request, pid_file), pid_file, stdin=slave, stdout=slave, stderr=slave)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # runc holds it now: when runc exits, reading the master ends with EIO
    os.set_blocking(master, False)
    tasks = []
    if channels.stdout is not None:
        tasks.append(asyncio.create_task(_copy_from_pty(master, channels.stdout)))
    if channels.stdin is not None:
        tasks.append(asyncio.create_task(_copy_to_pty(channels.stdin, master)))
    if sizes is not None:
        tasks.append(asyncio.create_task(_apply_resizes(sizes, master, proc.pid)))
    try:
        await proc.wait()
        if channels.stdout is not None:
            await asyncio.wait(tasks[:1], timeout=_DRAIN_GRACE_S)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        os.close(master)
        if proc.returncode is None:
            await _stop(proc, pid_file)
    return proc


async def _copy_from_pty(master: int, stream: Channel) -> None:
    with contextlib.suppress(StreamClosed):
        while chunk := await read_fd(master, _READ_SIZE):
            await stream.write(chunk)


async def _copy_to_pty(stream: Channel, master: int) -> None:
    while chunk := await stream.read():
        await write_fd(master, chunk)


async def _apply_resizes(sizes: AsyncIterator[TerminalSize], master: int, runtime_pid: int) -> None:
    async for size in sizes:
        resize_pty(master, size)
        with contextlib.suppress(ProcessLookupError):
            os.kill(runtime_pid, signal.SIGWINCH)


def resize_pty(fd: int, size: TerminalSize) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


async def _start_runtime(argv: list[str], pid_file: Path, **stdio: Any) -> asyncio.subprocess.Process:
    """Start the runtime. A cancellation (the client left) landing while it starts must still stop
    what was started: asyncio would kill only runc, and the command would live on without it."""
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, **stdio))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        try:
            proc = await starting
        except Exception:  # it did not start: nothing to stop
            raise asyncio.CancelledError from None
        await _stop(proc, pid_file)
        raise


async def _exec_pid(proc: asyncio.subprocess.Process, pid_file: Path) -> int:
    """The exec'd process's pid, once runc has written it (0 if runc ends or stalls first).

    runc writes the file right after the process exists; a client that leaves at once can get
    here before that, and runc gives no other sign, so the file is polled."""
    deadline = time.monotonic() + _REAP_GRACE_S
    while True:
        try:
            return int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pass
        if proc.returncode is not None or time.monotonic() > deadline:
            return 0
        await asyncio.sleep(_PID_FILE_POLL_S)


async def _stop(proc: asyncio.subprocess.Process, pid_file: Path) -> None:
    """Kill the exec'd process (killing only runc would leave it running in the container), reap runc."""
    try:
        pid = await asyncio.shield(_exec_pid(proc, pid_file))
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if pid > 0:
        # runc is alive and has not reaped its child, so the pid cannot have been reused yet.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        await asyncio.shield(asyncio.wait_for(proc.wait(), _REAP_GRACE_S))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
