"""Hostile or broken clients get clear HTTP errors, RST_STREAM or GOAWAY, and streamd goes on serving."""

from __future__ import annotations

import asyncio
import struct
import zlib

import pytest

from services.gateway.streaming import spdy
from tests.streaming.test_exec import SLEEP, exec_url
from tests.support.spdy_client import EXEC_PROTOCOLS, SpdyClient, UpgradeRefused, run_exec


def _base(url: str) -> str:
    return url.rsplit("/", 2)[0]


def test_unknown_token_and_route_are_404(pod):
    _, cid = pod.run_container(SLEEP)
    base = _base(exec_url(pod, cid, ["true"]))
    for path in ("/exec/notatoken", "/nothing/here", "/attach/", "/"):
        with pytest.raises(UpgradeRefused) as err:
            asyncio.run(SpdyClient.connect(base + path, EXEC_PROTOCOLS))
        assert err.value.status == 404, path


def test_a_token_for_another_kind_is_404(pod):
    _, cid = pod.run_container(SLEEP)
    url = exec_url(pod, cid, ["true"])
    with pytest.raises(UpgradeRefused) as err:
        asyncio.run(SpdyClient.connect(url.replace("/exec/", "/attach/"), EXEC_PROTOCOLS))
    assert err.value.status == 404


def test_missing_protocol_header_is_400_and_plain_http_is_refused(pod):
    _, cid = pod.run_container(SLEEP)
    with pytest.raises(UpgradeRefused) as err:
        asyncio.run(SpdyClient.connect(exec_url(pod, cid, ["true"]), ()))
    assert err.value.status == 400 and b"X-Stream-Protocol-Version is required" in err.value.body
    with pytest.raises(UpgradeRefused) as err:
        asyncio.run(SpdyClient.connect(exec_url(pod, cid, ["true"]), EXEC_PROTOCOLS, upgrade="websocket"))
    assert err.value.status == 400


def test_an_older_protocol_is_negotiated_when_offered_alone(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> str:
        client = await SpdyClient.connect(exec_url(pod, cid, ["true"]), ("v9.channel.k8s.io", "v2.channel.k8s.io"))
        await client.close()
        return client.protocol

    assert asyncio.run(go()) == "v2.channel.k8s.io"


def test_a_header_bomb_gets_goaway_and_a_closed_connection(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> spdy.GoAway | None:
        client = await SpdyClient.connect(exec_url(pod, cid, ["true"]), EXEC_PROTOCOLS)
        deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
        bomb = deflate.compress(struct.pack(">II", 1, 1 << 30))
        bomb += deflate.compress(b"\0" * (64 << 20)) + deflate.flush(zlib.Z_SYNC_FLUSH)  # "1 GB" claimed
        await client.send_raw(struct.pack(">HHI", 0x8003, 1, 10 + len(bomb)) + struct.pack(">IIBB", 1, 0, 0, 0)
                              + bomb)
        async with asyncio.timeout(10):
            await client.closed.wait()
        return client.goaway

    goaway = asyncio.run(go())
    assert goaway is not None and goaway.status == spdy.GoAwayStatus.PROTOCOL_ERROR


def test_garbage_after_the_upgrade_closes_only_that_connection(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> None:
        client = await SpdyClient.connect(exec_url(pod, cid, ["true"]), EXEC_PROTOCOLS)
        await client.send_raw(b"\x80\x07\x00\x01" + b"\xff" * 64)  # SPDY version 7
        async with asyncio.timeout(10):
            await client.closed.wait()

    asyncio.run(go())
    assert asyncio.run(run_exec(exec_url(pod, cid, ["echo", "still"]))).stdout == b"still\n"


def test_an_unexpected_stream_is_reset_and_the_session_goes_on(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> tuple[int | None, bytes]:
        client = await SpdyClient.connect(exec_url(pod, cid, ["echo", "ok"]), EXEC_PROTOCOLS)
        error = await client.open_stream({"streamtype": "error"})
        with pytest.raises(ConnectionError):
            await client.open_stream({"streamtype": "bogus"})
        bogus_status = client.streams[3].reset_status
        stdout = await client.open_stream({"streamtype": "stdout"})
        stderr = await client.open_stream({"streamtype": "stderr"})
        await client.ping(1)
        async with asyncio.timeout(20):
            out = await stdout.read_all()
            await stderr.read_all()
            await error.read_all()
        await client.close()
        return bogus_status, out

    status, out = asyncio.run(go())
    assert status == spdy.RstStatus.REFUSED_STREAM
    assert out == b"ok\n"
