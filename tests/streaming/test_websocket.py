"""Exec, attach and port-forward over WebSocket, end to end against real containers."""

from __future__ import annotations

import asyncio
import struct

import pytest

from tests.streaming.conftest import size_poll
from tests.streaming.test_attach import TICKER, attach_url
from tests.streaming.test_exec import SLEEP, exec_url
from tests.streaming.test_port_forward import GET, HTTPD, forward_url, serving
from tests.support.spdy_client import UpgradeRefused, forward_once
from tests.support.ws_client import STDOUT, WsClient, WsRemoteCommand, connect_spdy_tunnel


def test_v5_exec_echo_returns_output_and_success(pod):
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["echo", "hi"]))
        return session, await session.finish()

    session, result = asyncio.run(go())
    assert result.protocol == "v5.channel.k8s.io"
    assert session.first_empty == STDOUT  # the kubelet's "session is up" message
    assert result.stdout == b"hi\n"
    assert result.status == {"metadata": {}, "status": "Success"}


def test_v5_exec_exit_code_is_the_nonzero_exit_status(pod):
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["sh", "-c", "echo oops >&2; exit 3"]))
        return await session.finish()

    result = asyncio.run(go())
    assert result.exit_code == 3
    assert result.status["reason"] == "NonZeroExitCode"
    assert result.stderr == b"oops\n"


def test_v5_close_signal_ends_stdin(pod):
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["cat"], stdin=True))
        await session.write_stdin(b"data\n" * 1000)
        await session.close_stdin()
        return await session.finish()

    result = asyncio.run(go())
    assert result.stdout == b"data\n" * 1000
    assert result.exit_code == 0


def test_v5_exec_tty_reports_the_resized_terminal(pod):
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["sh"], stdin=True, tty=True))
        await session.send_resize(100, 30)
        await session.write_stdin(size_poll(30, 100) + b"exit 0\n")
        return await session.finish()

    result = asyncio.run(go())
    assert result.exit_code == 0
    assert b"size:30 100" in result.stdout


def test_v4_attach_sees_what_the_container_writes(pod):
    _, cid = pod.run_container(TICKER)

    async def go() -> tuple[str, bytes]:
        session = await WsRemoteCommand.open(attach_url(pod, cid), ("v4.channel.k8s.io",))
        try:
            return session.client.protocol, await session.read_until(STDOUT, b"tick\ntick\n")
        finally:
            await session.client.close()

    protocol, seen = asyncio.run(go())
    assert protocol == "v4.channel.k8s.io"
    assert b"tick\ntick\n" in seen


def test_port_forward_through_the_spdy_tunnel_subprotocol(pod):
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)

    async def go() -> tuple[str, bytes, bytes]:
        client = await connect_spdy_tunnel(forward_url(pod, sid))
        try:
            received, error = await forward_once(client, 0, 8080, GET)
            return client.protocol, received, error
        finally:
            await client.close()

    protocol, received, error = asyncio.run(go())
    assert protocol == "SPDY/3.1+portforward.k8s.io"
    assert error == b""
    assert received.startswith(b"HTTP/1.") and b"hello-pf" in received


def test_port_forward_over_websocket_channels(pod):
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)

    async def go() -> tuple[str, dict[int, bytes]]:
        client = await WsClient.connect(forward_url(pod, sid) + "?port=8080", ("v4.channel.k8s.io",))
        seen: dict[int, bytes] = {0: b"", 1: b""}
        try:
            async with asyncio.timeout(20):
                while len(seen[0]) < 2 or len(seen[1]) < 2:  # each channel opens with its port
                    message = await client.receive()
                    assert message is not None
                    seen[message[0]] += message[1:]
                await client.send(b"\x00" + GET)
                while (message := await client.receive()) is not None:
                    seen[message[0]] += message[1:]
        finally:
            await client.close()
        return client.protocol, seen

    protocol, seen = asyncio.run(go())
    assert protocol == "v4.channel.k8s.io"
    port = struct.pack("<H", 8080)
    assert seen[1] == port
    assert seen[0].startswith(port + b"HTTP/1.") and b"hello-pf" in seen[0]


def test_a_wrong_subprotocol_is_refused_naming_the_accepted_ones(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> UpgradeRefused:
        with pytest.raises(UpgradeRefused) as refused:
            await WsClient.connect(exec_url(pod, cid, ["true"]), ("v9.channel.k8s.io",))
        return refused.value

    refused = asyncio.run(go())
    assert refused.status in (400, 403)
    assert b"v5.channel.k8s.io" in refused.body and b"v4.channel.k8s.io" in refused.body


