"""Cancellation crosses the hop: a caller that stops waiting stops the daemon's handler too."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import msgpack
import pynng
import pytest

from shared.errors import DeadlineExceeded
from shared.nngio import prepare_ipc_dir
from shared.transport import CANCEL, CancelRequest, control_address
from shared.wire import encode_request
from tests.foundation.echo import ECHO, EchoRequest, client_of, echo_process, temp_config, until


def test_cancelling_the_caller_cancels_the_daemons_handler(config, tmp_path):
    async def main():
        with echo_process(config, tmp_path / "journal") as daemon:
            async with client_of(config) as client:
                call = asyncio.create_task(client.call(ECHO, EchoRequest("sleepy", 60.0), timeout=120))
                await until(lambda: "start:sleepy" in daemon.journal(), "the daemon never started the call")
                call.cancel()
                waited = await until(lambda: "cancelled:sleepy" in daemon.journal(),
                                     "the daemon's handler was not cancelled", timeout=1.0)
                assert waited < 1.0
                with pytest.raises(asyncio.CancelledError):
                    await call

    asyncio.run(main())


def test_client_timeout_sends_a_cancellation_naming_the_call(config):
    """The daemon enforces the deadline itself too; this pins that the client says so at once."""

    async def main():
        prepare_ipc_dir(config)
        # A daemon that reads requests and never answers.
        with pynng.Rep0(listen=config.ipc_address("echo")) as main_lane, \
                pynng.Rep0(listen=control_address(config, "echo")) as control_lane:
            async with client_of(config) as client:
                call = asyncio.create_task(client.call(ECHO, EchoRequest("slow"), timeout=0.3))
                request = msgpack.unpackb(await main_lane.arecv())
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded):
                    await call
                async with asyncio.timeout(1.0):
                    cancel = msgpack.unpackb(await control_lane.arecv())
                assert time.monotonic() - started < 1.0
                assert cancel[1] == CANCEL.name
                assert cancel[4] == {"call": request[5]}

    asyncio.run(main())


def test_cancellation_reaches_a_daemon_whose_workers_are_all_busy(tmp_path):
    """With every worker busy the daemon reads no new request; cancellations still get through,
    and a cancelled request still waiting in nng never runs."""

    async def main(config):
        with echo_process(config, tmp_path / "journal") as daemon:
            async with client_of(config) as client:
                busy = asyncio.create_task(client.call(ECHO, EchoRequest("busy", 60.0), timeout=120))
                await until(lambda: "start:busy" in daemon.journal(), "the daemon never started the call")
                queued = asyncio.create_task(client.call(ECHO, EchoRequest("queued", 60.0), timeout=120))
                await asyncio.sleep(0)  # let the call be sent
                queued.cancel()
                busy.cancel()
                await until(lambda: "cancelled:busy" in daemon.journal(),
                            "a cancellation must reach a daemon with no free worker", timeout=1.0)
                # Requests leave in order on one pipe: once this one ran, "queued" was read and dropped.
                await client.call(ECHO, EchoRequest("later"), timeout=5)
                assert daemon.journal() == ["start:busy", "cancelled:busy", "start:later", "done:later"]
                for task in (busy, queued):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    with temp_config(workers=1) as config:
        asyncio.run(main(config))


async def _tidy_call(config, daemon, deadline_s: float, cleanup_s: float, call: bytes,
                     cancel_when: str) -> None:
    """Send a raw request (a call id, a deadline) and, once `cancel_when` is in the journal, its
    `$cancel`; return once the handler has finished its cleanup."""
    await until(lambda: os.path.exists(config.ipc_address("echo").removeprefix("ipc://")), "the daemon")
    with pynng.Req0(dial=config.ipc_address("echo")) as main_lane, \
            pynng.Req0(dial=control_address(config, "echo")) as control_lane:
        args = EchoRequest("tidy", delay=60.0, cleanup=cleanup_s)
        await main_lane.asend(encode_request(ECHO, time.time() + deadline_s, "", args, call=call))
        await until(lambda: cancel_when in daemon.journal(), f"{cancel_when} before the cancellation")
        await control_lane.asend(encode_request(CANCEL, 0, "", CancelRequest(call)))
        await until(lambda: "cancelled:tidy" in daemon.journal(), "the handler to be cancelled")
        await until(lambda: "cleaned:tidy" in daemon.journal(), "the handler to finish its cleanup")


def test_a_cancellation_does_not_cut_short_a_handler_already_cleaning_up(config, tmp_path):
    """The daemon's deadline cancels the handler first; the caller's cancellation that follows
    must not interrupt the handler's cleanup (monitord kills an exec'd command there)."""

    async def main():
        with echo_process(config, tmp_path / "journal") as daemon:
            await _tidy_call(config, daemon, deadline_s=0.2, cleanup_s=0.5, call=b"call-1",
                             cancel_when="cancelled:tidy")

    asyncio.run(main())


def test_a_deadline_does_not_cut_short_the_cleanup_of_a_handler_its_caller_cancelled(config, tmp_path):
    """The other order: the caller cancels first, and the deadline passes during the cleanup."""

    async def main():
        with echo_process(config, tmp_path / "journal") as daemon:
            await _tidy_call(config, daemon, deadline_s=0.4, cleanup_s=0.6, call=b"call-2",
                             cancel_when="start:tidy")

    asyncio.run(main())
