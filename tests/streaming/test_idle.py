"""Time limits: an idle session ends after streamd.idle_timeout (PINGs do not count), and a URL
not used within streamd.token_ttl is gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest

from services.gateway.streaming import spdy
from tests.pods.conftest import start_pods
from tests.streaming.test_exec import SLEEP, exec_url
from tests.support.pods import Pods
from tests.support.runtime import wait_for
from tests.support.spdy_client import EXEC_PROTOCOLS, RemoteCommand, SpdyClient, UpgradeRefused

IDLE_S = 2.0
TOKEN_TTL_S = 1.0


@pytest.fixture(scope="module")
def pods(registry, pushed_busybox, tmp_path_factory) -> Iterator[Pods]:
    yield from start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("idle"),
                          f"[streamd]\nidle_timeout = {IDLE_S}\ntoken_ttl = {TOKEN_TTL_S}\n")


def test_an_idle_session_is_closed_even_while_the_client_pings(pod):
    _, cid = pod.run_container(SLEEP)

    async def go() -> float:
        session = await RemoteCommand.open(exec_url(pod, cid, ["sleep", "4444"]))
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(20):
            while not session.client.closed.is_set():
                await session.client.send(spdy.Ping(1))  # as client-go does, every 5 s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.client.closed.wait(), 0.3)
        elapsed = loop.time() - started
        await session.client.close()
        return elapsed

    assert IDLE_S * 0.9 <= asyncio.run(go()) < IDLE_S + 5
    wait_for(lambda: b"sleep 4444" not in pod.exec(cid, ["ps"]).stdout, 20, "the idle session's command to die")


def test_an_expired_token_is_404(pod):
    _, cid = pod.run_container(SLEEP)
    url = exec_url(pod, cid, ["true"])
    issued = time.monotonic()
    wait_for(lambda: time.monotonic() > issued + TOKEN_TTL_S + 0.2, 10, "the token's TTL to pass")
    with pytest.raises(UpgradeRefused) as err:
        asyncio.run(SpdyClient.connect(url, EXEC_PROTOCOLS))
    assert err.value.status == 404
