"""ExecSync: run a command in a running container and hand back its output and exit code.

`runc exec` without --process reuses the container's own process settings (user, env, cwd,
capabilities), so only the argv is ours. The runtime stays our child for the whole command,
which keeps the timeout simple: kill the exec'd process (its pid from --pid-file) and reap runc.

In a container with a tty, `runc exec --tty` in the foreground insists that its own stdio is a
terminal (it makes that terminal raw and copies it to and from the container's new console), so
it gets the slave of a pty of ours, and everything the command writes comes back as stdout, as
CRI-O's conmon -t returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import termios
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.monitord.oci_runtime import OciRuntime
from services.monitord.process_signal import ProcessHandle
from shared.errors import DeadlineExceeded
from shared.fdio import read_fd
from shared.schema.monitord import ExecSyncResponse

OUTPUT_CAP = 16 * 1024 * 1024  # per stream; the rest is read and dropped
# After the command ends, its own background children may still hold the pipes open.
_DRAIN_GRACE = 1.0
_REAP_GRACE = 10.0
_KILL_POLL = 0.01  # while runc has not written the command's pid file yet


async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        room = OUTPUT_CAP - len(into)
        if room > 0:
            into += chunk[:room]


async def _drain_pty(master: int, into: bytearray) -> None:
    while chunk := await read_fd(master):
        room = OUTPUT_CAP - len(into)
        if room > 0:
            into += chunk[:room]


def _open_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    # The output is returned as it was written: no "\n" -> "\r\n" on the way out.
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    os.set_blocking(master, False)
    return master, slave


def _kill_exec_process(pid_file: Path) -> bool:
    """SIGKILL the exec'd command; False while runc has not named it yet."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    with ProcessHandle(pid) as process:
        process.send(signal.SIGKILL)
    return True


async def _spawn(argv: list[str], pid_file: Path, **kwargs: Any) -> asyncio.subprocess.Process:
    """Start runc; a cancellation meanwhile lets the start finish, then stops the command.

    asyncio's own answer to a cancelled start is to SIGKILL the new process, and runc killed
    half-way through an exec can leave the command it was starting running in the container.
    """
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(*argv, **kwargs))
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        await _uninterrupted(_stop(await asyncio.shield(spawn), pid_file))
        raise


async def _uninterrupted(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run `cleanup` to its end even if this task is cancelled (again) meanwhile; then re-raise that."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError


async def _stop(proc: asyncio.subprocess.Process, pid_file: Path) -> None:
    """Timed out, or the call was cancelled: the command must not live on.

    runc may still be starting it, and killing runc then would not stop it: the command lives
    in the container, not under runc. So the pid file is looked for until runc names the
    command (then it is killed, and runc exits with it) or runc exits on its own.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _REAP_GRACE
    killed = False
    while proc.returncode is None and loop.time() < deadline:
        killed = killed or _kill_exec_process(pid_file)
        wait = deadline - loop.time() if killed else _KILL_POLL
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(wait, 0))
    if proc.returncode is None:
        proc.kill()
        await asyncio.shield(proc.wait())


async def exec_sync(runtime: OciRuntime, container_id: str, cmd: tuple[str, ...], tty: bool, timeout: int,
                    scratch_dir: Path) -> ExecSyncResponse:
    pid_file = scratch_dir / f"exec-{secrets.token_hex(8)}.pid"
    argv = runtime.argv("exec", *(["--tty"] if tty else []), "--pid-file", str(pid_file), container_id, *cmd)
    stdout, stderr = bytearray(), bytearray()
    master = -1
    proc: asyncio.subprocess.Process | None = None
    readers: list[asyncio.Task[None]] = []
    try:
        if tty:
            master, slave = _open_pty()
            try:
                proc = await _spawn(argv, pid_file, stdin=slave, stdout=slave, stderr=slave)
            finally:
                os.close(slave)  # runc holds it now: once runc is gone, the master reads EIO
            readers.append(asyncio.create_task(_drain_pty(master, stdout)))
        else:
            proc = await _spawn(argv, pid_file, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                stderr=asyncio.subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            readers += [asyncio.create_task(_drain(proc.stdout, stdout)),
                        asyncio.create_task(_drain(proc.stderr, stderr))]
        try:
            async with asyncio.timeout(timeout or None):
                code = await proc.wait()
        except TimeoutError:
            raise DeadlineExceeded(f"command {' '.join(cmd)!r:.200} timed out after {timeout} s") from None
        await asyncio.wait(readers, timeout=_DRAIN_GRACE)
    finally:
        if proc is not None and proc.returncode is None:
            await _uninterrupted(_stop(proc, pid_file))
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if master >= 0:
            os.close(master)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
    return ExecSyncResponse(bytes(stdout), bytes(stderr), code)
