"""The base64 WebSocket channel subprotocols (`v4.base64.channel.k8s.io`, `base64.channel.k8s.io`).

Each message is text: the channel as an ASCII digit, then the payload in standard base64.
The codec is pinned on its own, then exec, attach and port-forward run through it against
real containers with the test client's own implementation of the format.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from wsproto.events import TextMessage

from services.gateway.streaming.websocket import decode_base64, encode_base64
from tests.streaming.test_attach_tty import resize_over_websocket, run_tty_container
from tests.streaming.test_exec import SLEEP, exec_url
from tests.streaming.test_port_forward import GET, HTTPD, forward_url, serving
from tests.support.runtime import wait_for
from tests.support.spdy_client import UpgradeRefused
from tests.support.ws_client import STDOUT, WsClient, WsRemoteCommand

V4_BASE64 = "v4.base64.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"

# --- the codec ---------------------------------------------------------------------------


def test_a_message_is_the_channel_digit_then_standard_base64():
    assert encode_base64(1, b"hi\n") == "1aGkK"
    assert encode_base64(3, b"") == "3"
    assert encode_base64(0, b"\xff\xfe") == "0//4="  # standard alphabet, padded


@pytest.mark.parametrize("channel", [0, 1, 2, 3, 4, 9, 11])
def test_decoding_undoes_encoding(channel):
    payload = bytes(range(256)) * 3
    assert decode_base64(encode_base64(channel, payload).encode()) == (channel, payload)


def test_line_breaks_inside_the_base64_are_skipped_as_go_does():
    assert decode_base64(b"0aGVs\r\nbG8=\n") == (0, b"hello")


@pytest.mark.parametrize("message", [b"", b"1not base64!", b"1abc", b"\x001234"])
def test_undecodable_messages_are_value_errors(message):
    with pytest.raises(ValueError):
        decode_base64(message)


# --- end to end ----------------------------------------------------------------------------

READ_ONE_LINE = ["sh", "-c", 'read line; echo "got $line"; echo err >&2; exit 5']


def test_v4_base64_exec_carries_stdin_stdout_stderr_and_the_exit_status(pod):
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, READ_ONE_LINE, stdin=True), (V4_BASE64,))
        await session.write_stdin(b"hello \xff binary\n")
        return session, await session.finish()

    session, result = asyncio.run(go())
    assert result.protocol == V4_BASE64
    assert result.stdout == b"got hello \xff binary\n"
    assert result.stderr == b"err\n"
    assert result.exit_code == 5
    assert result.status["reason"] == "NonZeroExitCode"
    # Everything the server sent was text, the session-is-up message on stdout included.
    assert session.client.text_messages > 0 and session.client.binary_messages == 0
    assert session.first_empty == STDOUT


def test_v4_base64_exec_success_is_the_success_status(pod):
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["echo", "fine"]), (V4_BASE64,))
        return await session.finish()

    result = asyncio.run(go())
    assert result.stdout == b"fine\n"
    assert result.status == {"metadata": {}, "status": "Success"}


def test_pre_v4_base64_exec_reports_failure_as_a_plain_message(pod):
    _, cid = pod.run_container(SLEEP)

    async def go(cmd: list[str]):
        session = await WsRemoteCommand.open(exec_url(pod, cid, cmd), (BASE64,))
        return await session.finish()

    failed = asyncio.run(go(["sh", "-c", "echo out; exit 3"]))
    assert failed.protocol == BASE64
    assert failed.stdout == b"out\n"
    assert failed.error == b"command terminated with non-zero exit code: exit status 3"
    succeeded = asyncio.run(go(["true"]))
    assert succeeded.error == b""


def test_the_clients_order_picks_among_binary_and_base64(pod):
    _, cid = pod.run_container(SLEEP)

    async def chosen(offer: tuple[str, ...]) -> str:
        client = await WsClient.connect(exec_url(pod, cid, ["true"]), offer)
        await client.close()
        return client.protocol

    assert asyncio.run(chosen((V4_BASE64, "v4.channel.k8s.io"))) == V4_BASE64
    assert asyncio.run(chosen(("v4.channel.k8s.io", V4_BASE64))) == "v4.channel.k8s.io"


def test_a_refusal_lists_base64_after_the_binary_subprotocols(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> UpgradeRefused:
        with pytest.raises(UpgradeRefused) as refused:
            await WsClient.connect(exec_url(pod, cid, ["true"]), ("v9.channel.k8s.io",))
        return refused.value

    offered = [v.decode() for k, v in asyncio.run(go()).headers if k == b"sec-websocket-protocol"]
    assert offered == ["v5.channel.k8s.io", "v4.channel.k8s.io", V4_BASE64, BASE64]


def test_an_undecodable_base64_message_closes_the_session_and_ends_the_command(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> int | None:
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["sleep", "4545"], stdin=True), (V4_BASE64,))
        await session.client.send("0this is not base64!")
        async with asyncio.timeout(20):
            while await session.client.receive() is not None:
                pass
        await session.client.close()
        return session.client.close_code

    assert asyncio.run(go()) == 1007  # invalid frame payload data
    wait_for(lambda: b"sleep 4545" not in pod.exec(cid, ["ps"]).stdout, 20, "the exec'd sleep to be killed")


def test_a_base64_message_split_across_frames_is_decoded_whole(pod):
    _, cid = pod.run_container(SLEEP)
    line = b"split across frames\n"

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["head", "-n", "1"], stdin=True), (V4_BASE64,))
        text = "0" + base64.b64encode(line).decode()
        # Cut inside a 4-character base64 group: only the whole message decodes.
        for part, last in ((text[:6], False), (text[6:], True)):
            session.client.writer.write(session.client.ws.send(TextMessage(data=part, message_finished=last)))
        await session.client.writer.drain()
        return await session.finish()

    result = asyncio.run(go())
    assert result.stdout == line
    assert result.exit_code == 0


def test_a_base64_message_may_arrive_in_a_binary_frame(pod):
    """The kubelet reads either frame type; only the content's form matters."""
    _, cid = pod.run_container(SLEEP)

    async def go():
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["head", "-n", "1"], stdin=True), (V4_BASE64,))
        await session.client.send(b"0" + base64.b64encode(b"binary frame\n"))
        return await session.finish()

    assert asyncio.run(go()).stdout == b"binary frame\n"


def test_an_oversized_base64_message_closes_the_session_as_too_big(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> int | None:
        session = await WsRemoteCommand.open(exec_url(pod, cid, ["cat"], stdin=True), (V4_BASE64,))
        await session.client.send("0" + "A" * (5 * 1024 * 1024))
        async with asyncio.timeout(20):
            while await session.client.receive() is not None:
                pass
        await session.client.close()
        return session.client.close_code

    assert asyncio.run(go()) == 1009  # message too big


def test_v4_base64_attach_with_a_tty_resizes_the_console(pod):
    cid = run_tty_container(pod)
    assert b"size=11 66" in resize_over_websocket(pod, cid, 66, 11, (V4_BASE64,))


def test_port_forward_over_v4_base64_channels(pod):
    sid, cid = pod.run_container(HTTPD)
    serving(pod, cid)

    async def go() -> tuple[str, dict[int, bytes]]:
        client = await WsClient.connect(forward_url(pod, sid) + "?port=8080", (V4_BASE64,))
        seen: dict[int, bytes] = {0: b"", 1: b""}

        def take(message: bytes) -> None:
            seen[message[0] - ord("0")] += base64.b64decode(message[1:])

        try:
            async with asyncio.timeout(20):
                while len(seen[0]) < 2 or len(seen[1]) < 2:  # each channel opens with its port
                    message = await client.receive()
                    assert message is not None
                    take(message)
                await client.send("0" + base64.b64encode(GET).decode())
                while (message := await client.receive()) is not None:
                    take(message)
        finally:
            await client.close()
        return client.protocol, seen

    protocol, seen = asyncio.run(go())
    assert protocol == V4_BASE64
    port = (8080).to_bytes(2, "little")
    assert seen[1] == port
    assert seen[0].startswith(port + b"HTTP/1.") and b"hello-pf" in seen[0]
