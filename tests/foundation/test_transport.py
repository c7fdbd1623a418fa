"""The nng hop: typed calls, concurrency, deadlines, fail-fast, restarts, de-duplication."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time

import msgpack
import pynng
import pytest

from shared.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable, Unimplemented
from shared.transport import EventPublisher, connect_grace
from tests.foundation.echo import (
    ECHO,
    UNKNOWN,
    EchoRequest,
    client_of,
    echo_process,
    echo_server,
    make_config,
    serving,
    until,
)
from tests.support.runtime import REPO


def test_typed_call_round_trip_and_typed_errors(config):
    async def main():
        async with serving(echo_server(config)), client_of(config) as client:
            answer = await client.call(ECHO, EchoRequest("hi"))
            assert (answer.text, answer.pid) == ("hi", os.getpid())
            with pytest.raises(NotFound, match="no such thing"):
                await client.call(ECHO, EchoRequest("missing"))
            with pytest.raises(Unimplemented):
                await client.call(UNKNOWN, EchoRequest("x"))

    asyncio.run(main())


def test_concurrent_calls_are_served_concurrently(config):
    async def main():
        journal: list[str] = []
        async with serving(echo_server(config, journal.append)), client_of(config) as client:
            started = time.monotonic()
            results = await asyncio.gather(*(client.call(ECHO, EchoRequest(str(i), 0.3)) for i in range(32)))
            elapsed = time.monotonic() - started
            assert [r.text for r in results] == [str(i) for i in range(32)]
            assert elapsed < 1.5, f"32 calls of 0.3 s took {elapsed:.2f}s: not concurrent"
            # Every call had started before the first one finished.
            first_done = next(i for i, entry in enumerate(journal) if entry.startswith("done:"))
            assert sum(entry.startswith("start:") for entry in journal[:first_done]) == 32

    asyncio.run(main())


def test_deadline_is_enforced_on_both_sides(config):
    async def main():
        journal: list[str] = []
        async with serving(echo_server(config, journal.append)), client_of(config) as client:
            # The client gives up at its timeout...
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await client.call(ECHO, EchoRequest("slow", 5.0), timeout=0.2)
            assert time.monotonic() - started < 1.0
            # ...and the daemon stops the handler at the envelope's deadline on its own, even for a
            # caller that never cancels: a raw socket that just waits for the answer.
            with pynng.Req0(dial=config.ipc_address("echo"), recv_timeout=5000) as sock:
                started = time.monotonic()
                await sock.asend(msgpack.packb([1, "echo", time.time() + 0.2, "", {"text": "raw", "delay": 5.0}]))
                ok, error = msgpack.unpackb(await sock.arecv())
                assert not ok and error[0] == DeadlineExceeded.code.value
                assert time.monotonic() - started < 1.0
            assert "cancelled:raw" in journal and "done:raw" not in journal

    asyncio.run(main())


def test_malformed_request_gets_invalid_argument_not_a_crash(config):
    async def main():
        journal: list[str] = []
        async with serving(echo_server(config, journal.append)):
            with pynng.Req0(dial=config.ipc_address("echo")) as sock:
                for junk in (b"\xc1garbage", msgpack.packb([1, "echo", 0, "", {"text": 5}])):
                    await sock.asend(junk)
                    ok, err = msgpack.unpackb(await sock.arecv())
                    assert not ok and err[0] == InvalidArgument.code.value
            assert journal == [], "a malformed request must never reach the handler"
            async with client_of(config) as client:
                assert (await client.call(ECHO, EchoRequest("still alive"))).text == "still alive"

    asyncio.run(main())


def test_down_daemon_fails_fast_and_next_call_after_restart_succeeds(config, tmp_path):
    async def main():
        async with client_of(config, connected=False) as client:
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await client.call(ECHO, EchoRequest("x"), timeout=10)
            assert time.monotonic() - started < 1.0, "a down daemon must fail fast, not wait for the deadline"
            with echo_process(config, tmp_path / "first") as first:
                await until(lambda: client.connected, "never connected to the first daemon")
                answer_one = await client.call(ECHO, EchoRequest("a"), timeout=5)
                assert answer_one.pid == first.proc.pid
            await until(lambda: not client.connected, "the pipe to the killed daemon stayed up")
            with echo_process(config, tmp_path / "second") as second:
                await until(lambda: client.connected, "never reconnected to the restarted daemon")
                answer_two = await client.call(ECHO, EchoRequest("b"), timeout=5)
                assert answer_two.pid == second.proc.pid
                assert second.journal() == ["start:b", "done:b"]

    asyncio.run(main())


def test_call_in_flight_when_daemon_dies_fails_unavailable_and_is_not_rerun(config, tmp_path):
    async def main():
        async with client_of(config, connected=False) as client:
            with echo_process(config, tmp_path / "first") as first:
                await until(lambda: client.connected, "never connected")
                call = asyncio.create_task(client.call(ECHO, EchoRequest("long", 30.0), timeout=60))
                await until(lambda: "start:long" in first.journal(), "the daemon never started the call")
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await call
            assert time.monotonic() - started < 1.0
            assert first.journal() == ["start:long"]
            # A restarted daemon must not receive the old request again (cooked REQ would resend it).
            with echo_process(config, tmp_path / "second") as second:
                await until(lambda: client.connected, "never reconnected")
                # Anything resent would reach the daemon before this call, on the same pipe.
                await client.call(ECHO, EchoRequest("after"), timeout=5)
                assert second.journal() == ["start:after", "done:after"]

    asyncio.run(main())


def test_oversized_message_is_refused_by_the_receiver(config):
    async def main():
        journal: list[str] = []
        async with serving(echo_server(config, journal.append)), client_of(config) as client:
            with pytest.raises((Unavailable, DeadlineExceeded)):
                await client.call(ECHO, EchoRequest("x" * (config.transport.max_message_bytes + 10)), timeout=1)
            assert journal == [], "the daemon must drop an oversized message unread"
            await until(lambda: client.connected, "the client never reconnected")
            assert (await client.call(ECHO, EchoRequest("small"), timeout=5)).text == "small"
            assert journal == ["start:small", "done:small"]

    asyncio.run(main())


def test_ipc_directory_is_root_only(config):
    publisher = EventPublisher("echo", config)
    try:
        st = config.ipc_dir.stat()
        assert st.st_mode & 0o777 == 0o700
        assert st.st_uid == os.getuid() == 0
    finally:
        publisher.close()


def test_connect_grace_covers_a_configured_slow_redial(tmp_path):
    """nng redials after a random part of the reconnect interval: with intervals of up to 1 s, a call
    made just after the daemon came back must wait past 0.3 s for the redial. Repeated, because a
    redial can also fall early."""

    async def main(config):
        for _ in range(5):
            async with client_of(config, connected=False) as client:
                with pytest.raises(Unavailable):  # no daemon: the first dial fails
                    await client.call(ECHO, EchoRequest("x"), timeout=0.05)
                async with serving(echo_server(config)):
                    started = time.monotonic()
                    assert (await client.call(ECHO, EchoRequest("back"), timeout=5)).text == "back"
                    assert time.monotonic() - started < connect_grace(config) + 0.5

    config = make_config(tmp_path, workers=4)
    config = dataclasses.replace(config, transport=dataclasses.replace(
        config.transport, reconnect_min_ms=1000, reconnect_max_ms=1000))
    assert connect_grace(config) == pytest.approx(1.5)
    asyncio.run(main(config))


def test_importing_the_daemons_leaves_logging_alone():
    """Logging is set up by the daemon at its start; an import (a test, a tool) must not change it."""
    script = (
        "import logging, importlib\n"
        "for name in ('imaged', 'storaged', 'netd', 'monitord'):\n"
        "    importlib.import_module(f'services.{name}.service')\n"
        "importlib.import_module('services.gateway.main')\n"
        "changed = sorted(n for n, l in logging.root.manager.loggerDict.items()\n"
        "                 if isinstance(l, logging.Logger) and l.level != logging.NOTSET)\n"
        "assert not changed and logging.root.level == logging.WARNING and not logging.root.handlers, changed\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True)
