"""Who owns a session: streamd does, so restarting the gateway leaves it be, restarting streamd ends it."""

from __future__ import annotations

import asyncio

from shared.cri import api_pb2
from tests.streaming.test_exec import SLEEP, exec_url
from tests.support.runtime import wait_for
from tests.support.spdy_client import RemoteCommand, run_exec


async def _read_until(stream, needle: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen and (chunk := await stream.read()):
            seen += chunk
    return seen


def test_a_gateway_restart_does_not_end_an_exec_session(pod):
    _, cid = pod.run_container(SLEEP)
    url = exec_url(pod, cid, ["sh", "-c", "echo ready; read line; echo got $line"], stdin=True)
    old_gateway = pod.run.daemon_pid("gateway")

    async def go() -> bytes:
        session = await RemoteCommand.open(url, stdin=True)
        assert session.stdin is not None and session.stdout is not None
        seen = await _read_until(session.stdout, b"ready\n")
        out = await asyncio.to_thread(pod.run.supervisorctl, "restart", "gateway")
        assert "started" in out, out
        assert pod.run.daemon_pid("gateway") != old_gateway
        await session.stdin.write(b"after-restart\n")
        await session.stdin.close()
        result = await session.finish()
        assert result.exit_code == 0
        return seen + result.stdout

    assert asyncio.run(go()) == b"ready\ngot after-restart\n"
    wait_for(pod.run.ready, 20, "the gateway to serve again")


def test_a_streamd_restart_ends_its_sessions_and_the_container_keeps_running(pod):
    _, cid = pod.run_container(SLEEP)
    url = exec_url(pod, cid, ["sh", "-c", "echo ready; exec sleep 4343"])
    old_streamd = pod.run.daemon_pid("streamd")

    async def go() -> bool:
        session = await RemoteCommand.open(url)
        assert session.stdout is not None
        assert b"ready\n" in await _read_until(session.stdout, b"ready\n")
        out = await asyncio.to_thread(pod.run.supervisorctl, "restart", "streamd")
        assert "started" in out, out
        async with asyncio.timeout(20):
            await session.client.closed.wait()
        goaway = session.client.goaway is not None
        await session.client.close()
        return goaway

    assert asyncio.run(go()), "streamd did not say GOAWAY before closing"
    assert pod.run.daemon_pid("streamd") != old_streamd
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    # The session's command died with it; the container's own process did not.
    wait_for(lambda: b"sleep 4343" not in pod.exec(cid, ["ps"]).stdout, 20, "the exec'd sleep to be gone")
    # The new streamd serves new sessions.
    wait_for(lambda: _echo_works(pod, cid), 20, "exec through the new streamd")


def _echo_works(pod, cid: str) -> bool:
    try:
        return asyncio.run(run_exec(exec_url(pod, cid, ["echo", "again"]))).stdout == b"again\n"
    except Exception:
        return False
