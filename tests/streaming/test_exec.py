"""Exec end to end: the gateway's Exec, streamd's SPDY session, runc exec in a real container."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
import termios
import time

import grpc
import pytest

from shared.cri import api_pb2
from tests.streaming.conftest import run_crictl, size_poll
from tests.support.pods import Pods
from tests.support.runtime import wait_for
from tests.support.spdy_client import RemoteCommand, SpdyClient, UpgradeRefused, run_exec

SLEEP = ("sleep", "2147483647")


def exec_url(pods: Pods, cid: str, cmd: list[str], *, stdin: bool = False, tty: bool = False) -> str:
    return pods.client.runtime.Exec(api_pb2.ExecRequest(
        container_id=cid, cmd=cmd, stdin=stdin, stdout=True, stderr=not tty, tty=tty), timeout=10).url


def test_exec_echo_returns_output_and_success(pod):
    _, cid = pod.run_container(SLEEP)
    result = asyncio.run(run_exec(exec_url(pod, cid, ["echo", "hi"])))
    assert result.protocol == "v4.channel.k8s.io"
    assert result.stdout == b"hi\n"
    assert result.status == {"metadata": {}, "status": "Success"}


def test_exec_with_crictl_prints_output(pod, crictl):
    _, cid = pod.run_container(SLEEP)
    out = run_crictl(crictl, "exec", cid, "echo", "hi")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hi\n"


def test_exec_exit_code_is_the_v4_nonzero_exit_status(pod):
    _, cid = pod.run_container(SLEEP)
    result = asyncio.run(run_exec(exec_url(pod, cid, ["sh", "-c", "echo oops >&2; exit 3"])))
    assert result.exit_code == 3
    assert result.status["reason"] == "NonZeroExitCode"
    assert result.stderr == b"oops\n"


def test_exec_exit_code_with_crictl(pod, crictl):
    _, cid = pod.run_container(SLEEP)
    out = run_crictl(crictl, "exec", cid, "sh", "-c", "exit 3")
    # crictl v1.26 reports the decoded exit code in its fatal message and exits 1 itself.
    assert out.returncode != 0
    assert b"command terminated with exit code 3" in out.stderr


def test_exec_stdin_reaches_the_command_and_its_end_closes_it(pod):
    _, cid = pod.run_container(SLEEP)
    result = asyncio.run(run_exec(exec_url(pod, cid, ["cat"], stdin=True), stdin=b"data\n" * 1000))
    assert result.stdout == b"data\n" * 1000
    assert result.exit_code == 0


def test_exec_stdin_piped_with_crictl(pod, crictl):
    _, cid = pod.run_container(SLEEP)
    out = run_crictl(crictl, "exec", "-i", cid, "cat", input=b"data\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"data\n"


def test_exec_tty_reports_the_resized_terminal(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> bytes:
        session = await RemoteCommand.open(exec_url(pod, cid, ["sh"], stdin=True, tty=True), stdin=True, tty=True)
        assert session.resize is not None and session.stdin is not None
        await session.send_resize(100, 30)
        # The prompt and echo come back through the tty; ask for the size after the resize landed.
        await session.stdin.write(size_poll(30, 100) + b"exit 0\n")
        result = await session.finish()
        assert result.exit_code == 0
        return result.stdout

    output = asyncio.run(go())
    assert b"size:30 100" in output


def test_exec_tty_with_crictl_under_a_pty(pod, crictl):
    _, cid = pod.run_container(SLEEP)
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        # The pause: with `runc exec -t` in the foreground, the command can start before runc has
        # copied the size onto the container's console (a race inside runc); a shell asks later.
        proc = subprocess.Popen([*crictl, "exec", "-it", cid, "sh", "-c", "sleep 0.5; stty size"],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=30) == 0, output
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert b"33 111" in output


def test_exec_in_a_stopped_container_is_failed_precondition(pod):
    _, cid = pod.run_container(["true"])
    pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
    with pytest.raises(grpc.RpcError) as err:
        exec_url(pod, cid, ["echo"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_exec_in_an_unknown_container_is_not_found(pod):
    with pytest.raises(grpc.RpcError) as err:
        exec_url(pod, "f" * 64, ["echo"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_used_token_is_404(pod):
    _, cid = pod.run_container(SLEEP)
    url = exec_url(pod, cid, ["true"])
    assert asyncio.run(run_exec(url)).exit_code == 0
    with pytest.raises(UpgradeRefused) as err:
        asyncio.run(run_exec(url))
    assert err.value.status == 404


def test_no_common_protocol_is_403_naming_the_accepted_ones(pod):
    _, cid = pod.run_container(SLEEP)
    with pytest.raises(UpgradeRefused) as err:
        asyncio.run(SpdyClient.connect(exec_url(pod, cid, ["true"]), ("v9.channel.k8s.io",)))
    assert err.value.status == 403
    accepted = [v.decode() for k, v in err.value.headers if k == b"x-accepted-stream-protocol-versions"]
    assert accepted == ["v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"]


def test_a_client_leaving_mid_command_kills_the_command(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> None:
        session = await RemoteCommand.open(exec_url(pod, cid, ["sleep", "4242"]))
        await asyncio.sleep(0)  # the streams are open: the command is starting
        await session.client.close()

    asyncio.run(go())

    def sleeping() -> bool:
        return any(b"4242" in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())

    wait_for(lambda: not sleeping() and b"sleep 4242" not in pod.exec(cid, ["ps"]).stdout, 20,
             "the exec'd sleep to be killed")


def test_clients_leaving_as_their_commands_start_leave_no_command_running(pod):
    """Each client leaves the moment its streams are open: while runc starts, or before it has
    written the command's pid. Every command must still be killed."""
    _, cid = pod.run_container(SLEEP)
    urls = [exec_url(pod, cid, ["sleep", str(4700 + i)]) for i in range(12)]

    async def leave_at_once(url: str) -> None:
        session = await RemoteCommand.open(url)
        await session.client.close()

    async def go() -> None:
        await asyncio.gather(*(leave_at_once(url) for url in urls))

    asyncio.run(go())

    def in_container() -> list[str]:
        return [line for line in pod.exec(cid, ["ps"]).stdout.decode().splitlines() if "sleep 47" in line]

    def runc_execs() -> list[bytes]:
        return [_cmdline(p) for p in os.listdir("/proc") if p.isdigit() and b"sleep 47" in _cmdline(p)]

    wait_for(lambda: not in_container() and not runc_execs(), 30,
             "every exec'd sleep and its runc exec to be gone")


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def test_a_client_disconnecting_mid_stream_leaks_no_process_or_fd(pod):
    """The client goes away while its command runs: the command, its `runc exec` and every fd
    streamd opened for the session are gone afterwards."""
    _, cid = pod.run_container(SLEEP)
    streamd = pod.run.daemon_pid("streamd")

    def fds() -> int:
        return len(os.listdir(f"/proc/{streamd}/fd"))

    def runc_execs() -> list[str]:
        return [p for p in os.listdir("/proc") if p.isdigit()
                and b"runc" in _cmdline(p) and b" exec " in _cmdline(p) and cid.encode() in _cmdline(p)]

    baseline = fds()

    async def go() -> None:
        session = await RemoteCommand.open(exec_url(pod, cid, ["sleep", "4343"]))
        await asyncio.to_thread(wait_for, lambda: b"sleep 4343" in pod.exec(cid, ["ps"]).stdout, 20,
                                "the command to run")
        assert runc_execs(), "the session's runc exec should be running"
        await session.client.close()

    asyncio.run(go())
    wait_for(lambda: b"sleep 4343" not in pod.exec(cid, ["ps"]).stdout and not runc_execs(), 20,
             "the command and its runc exec to be gone")
    wait_for(lambda: fds() <= baseline, 20, f"streamd's fds to return to {baseline}")
