"""Attach to a container created with a tty: its console through conmon, resizes through conmon's ctl FIFO.

The container's shell prints its console's size whenever SIGWINCH arrives, and ticks so the
test knows the trap is set before it resizes. The size is also read from outside, by
ExecSync of `stty -F /dev/console size` (runc's console for the container).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios

from tests.streaming.conftest import size_poll
from tests.streaming.test_attach import attach_url
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.runtime import wait_for
from tests.support.spdy_client import RemoteCommand
from tests.support.ws_client import STDOUT, WsRemoteCommand

SIZE_REPORTER = ("sh", "-c", "trap 'echo size=$(stty size)' WINCH; while true; do echo tick; sleep 0.2; done")


def run_tty_container(pods: Pods, command: tuple[str, ...] = SIZE_REPORTER) -> str:
    sandbox = sandbox_config()
    sid = pods.run_pod(sandbox)
    config = container_config(pods.image, command, tty=True)
    config.stdin = True
    cid = pods.create(sid, config, sandbox)
    pods.start(cid)
    return cid


def console_size(pods: Pods, cid: str) -> bytes:
    return pods.exec(cid, ["busybox", "stty", "-F", "/dev/console", "size"]).stdout.strip()


async def _read_until(stream, needle: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            chunk = await stream.read()
            assert chunk, f"the attach session ended before {needle!r}; saw {seen!r}"
            seen += chunk
    return seen


def test_spdy_attach_resize_changes_the_container_console_size(pod):
    cid = run_tty_container(pod)

    async def go() -> tuple[bytes, bytes]:
        session = await RemoteCommand.open(attach_url(pod, cid, stdin=True, tty=True), stdin=True, tty=True)
        try:
            assert session.resize is not None and session.stderr is None  # a tty merges stderr
            await _read_until(session.stdout, b"tick")  # the shell's trap is set
            await session.send_resize(123, 45)
            first = await _read_until(session.stdout, b"size=45 123")
            await session.send_resize(80, 24)
            second = await _read_until(session.stdout, b"size=24 80")
            return first, second
        finally:
            await session.client.close()

    first, second = asyncio.run(go())
    assert b"size=45 123\r\n" in first  # a console's output: \n became \r\n
    assert b"size=24 80" in second
    assert console_size(pod, cid) == b"24 80"


def resize_over_websocket(pod: Pods, cid: str, width: int, height: int,
                          protocols: tuple[str, ...] = ("v5.channel.k8s.io",)) -> bytes:
    """Attach with a tty over WebSocket, resize, and return the output up to the new size's report."""

    async def go() -> bytes:
        session = await WsRemoteCommand.open(attach_url(pod, cid, stdin=True, tty=True), protocols)
        try:
            await session.read_until(STDOUT, b"tick")
            await session.send_resize(width, height)
            return await session.read_until(STDOUT, f"size={height} {width}".encode())
        finally:
            await session.client.close()

    return asyncio.run(go())


def test_websocket_v5_attach_resize_changes_the_container_console_size(pod):
    cid = run_tty_container(pod)
    assert b"size=22 77" in resize_over_websocket(pod, cid, 77, 22)
    assert console_size(pod, cid) == b"22 77"


def test_attach_tty_stdin_reaches_the_container_shell(pod):
    cid = run_tty_container(pod, ("sh",))

    async def go() -> bytes:
        session = await RemoteCommand.open(attach_url(pod, cid, stdin=True, tty=True), stdin=True, tty=True)
        try:
            assert session.stdin is not None
            await session.send_resize(90, 20)
            await session.stdin.write(b"echo answer=$((6*7))\n" + size_poll(20, 90))
            return await _read_until(session.stdout, b"size:20 90")
        finally:
            await session.client.close()

    output = asyncio.run(go())
    assert b"answer=42" in output and b"size:20 90" in output


def test_exec_sync_in_a_tty_container_returns_the_output_as_stdout(pod):
    cid = run_tty_container(pod)
    # runc clears ONLCR on the container's new console only once it holds the console's master,
    # and may start the command before that (runc's tty.go, recvtty): on a busy machine an
    # early "echo" can come out as "out\r\n". The command waits until the console is set.
    script = "until busybox stty -a 2>/dev/null | grep -q -- -onlcr; do :; done; echo out; echo err >&2; exit 3"
    result = pod.exec(cid, ["sh", "-c", script])
    assert result.exit_code == 3
    assert result.stdout == b"out\nerr\n"
    assert result.stderr == b""


def test_attach_tty_with_crictl_under_a_pty_follows_the_terminal_size(pod, crictl):
    cid = run_tty_container(pod)
    master, slave = os.openpty()
    proc: subprocess.Popen[bytes] | None = None
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        proc = subprocess.Popen([*crictl, "attach", "-it", cid], stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True)
        os.close(slave)
        slave = -1
        seen = bytearray()

        def output_has(needle: bytes) -> bool:
            with contextlib.suppress(BlockingIOError):
                seen.extend(os.read(master, 4096))
            return needle in seen

        os.set_blocking(master, False)
        # crictl sends its terminal's size when the session starts...
        wait_for(lambda: console_size(pod, cid) == b"33 111", 30, "the console to take crictl's size")
        # ...and again on SIGWINCH, as the terminal it runs in is resized.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        os.kill(proc.pid, signal.SIGWINCH)
        wait_for(lambda: output_has(b"size=50 160"), 30, "the shell to report the new size")
        assert console_size(pod, cid) == b"50 160"
    finally:
        if slave >= 0:
            os.close(slave)
        if proc is not None:
            proc.kill()
            proc.wait()
        os.close(master)
