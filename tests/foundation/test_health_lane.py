"""Health is never starved: it has a lane of its own that busy workers cannot block."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pynng
import pytest

from shared.errors import FailedPrecondition
from shared.schema.common import HEALTH, HealthRequest
from shared.transport import control_address
from shared.wire import decode_response, encode_request
from tests.foundation.echo import ECHO, EchoRequest, client_of, echo_server, serving, until


def test_health_answers_while_every_worker_is_busy_with_slow_calls(config):
    async def main():
        journal: list[str] = []
        async with serving(echo_server(config, journal.append)), client_of(config) as client:
            slow = [asyncio.create_task(client.call(ECHO, EchoRequest(f"slow{i}", 30.0), timeout=30))
                    for i in range(config.transport.workers + 8)]
            try:
                workers = config.transport.workers
                await until(lambda: sum(e.startswith("start:") for e in journal) == workers, "workers not all busy")
                health = await client.call(HEALTH, HealthRequest(), timeout=1.0)
                assert health.ready and health.pid == os.getpid()
                assert sum(e.startswith("start:") for e in journal) == workers, "the extra calls must wait in nng"
            finally:
                for task in slow:
                    task.cancel()
                for task in slow:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    asyncio.run(main())


def test_control_lane_carries_only_health_and_cancellations(config):
    async def main():
        journal: list[str] = []
        async with serving(echo_server(config, journal.append)):
            with pynng.Req0(dial=control_address(config, "echo"), recv_timeout=5000) as sock:
                await sock.asend(encode_request(ECHO, 0, "", EchoRequest("sneaky")))
                with pytest.raises(FailedPrecondition, match="control lane"):
                    decode_response(await sock.arecv(), ECHO)
                await sock.asend(encode_request(HEALTH, 0, "", HealthRequest()))
                assert decode_response(await sock.arecv(), HEALTH).ready
            assert journal == []

    asyncio.run(main())
