"""Attach end to end: conmon's attach socket of a running container, through streamd."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.spdy_client import RemoteCommand

TICKER = ("sh", "-c", "while true; do echo tick; sleep 0.2; done")


def attach_url(pods: Pods, cid: str, *, stdin: bool = False, tty: bool = False) -> str:
    return pods.client.runtime.Attach(api_pb2.AttachRequest(
        container_id=cid, stdin=stdin, stdout=True, stderr=not tty, tty=tty), timeout=10).url


async def _read_until(stream, needle: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            chunk = await stream.read()
            if not chunk:
                break
            seen += chunk
    return seen


def test_attach_sees_what_the_container_writes(pod):
    _, cid = pod.run_container(TICKER)

    async def go() -> bytes:
        session = await RemoteCommand.open(attach_url(pod, cid))
        assert session.stdout is not None
        seen = await _read_until(session.stdout, b"tick\ntick\n")
        await session.client.close()
        return seen

    assert b"tick\ntick\n" in asyncio.run(go())
    # Leaving the attach session leaves the container running.
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING


def test_attach_stdin_reaches_a_cat_container_and_stdin_once_ends_it(pod):
    sandbox = sandbox_config()
    sid = pod.run_pod(sandbox)
    config = container_config(pod.image, ["cat"])
    config.stdin = True
    config.stdin_once = True
    cid = pod.create(sid, config, sandbox)
    pod.start(cid)

    async def go() -> tuple[bytes, dict]:
        session = await RemoteCommand.open(attach_url(pod, cid, stdin=True), stdin=True)
        assert session.stdin is not None and session.stdout is not None
        await session.stdin.write(b"hello through conmon\n")
        seen = await _read_until(session.stdout, b"hello through conmon\n")
        await session.stdin.close()  # stdin_once: the container's stdin closes, cat exits
        result = await session.finish()
        return seen + result.stdout, result.status

    output, status = asyncio.run(go())
    assert b"hello through conmon\n" in output
    assert status == {"metadata": {}, "status": "Success"}
    pod.wait_state(cid, api_pb2.CONTAINER_EXITED)


def test_attach_with_crictl_sees_ticks(pod, crictl):
    _, cid = pod.run_container(TICKER)
    proc = subprocess.Popen([*crictl, "attach", cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == b"tick\n", proc.stderr.read() if proc.poll() is not None else first
    finally:
        proc.kill()
        proc.wait()


def test_attach_to_an_unknown_container_is_not_found(pod):
    with pytest.raises(grpc.RpcError) as err:
        attach_url(pod, "e" * 64)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_tty_with_stderr_is_invalid(pod):
    _, cid = pod.run_container(TICKER)
    with pytest.raises(grpc.RpcError) as err:
        pod.client.runtime.Attach(api_pb2.AttachRequest(container_id=cid, stdout=True, stderr=True, tty=True),
                                  timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
