"""The nng hop: typed calls, concurrency, deadlines, fail-fast, restarts, de-duplication, pub/sub."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pynng
import pytest

from shared.config import Config, PathsConfig
from shared.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable, Unimplemented
from shared.tracing import Tracing
from shared.transport import DaemonClient, DaemonServer, EventPublisher, EventSubscriber
from shared.wire import Method
from tests.support.runtime import REPO


@dataclass(frozen=True)
class EchoRequest:
    text: str
    delay: float = 0.0


@dataclass(frozen=True)
class EchoResponse:
    text: str
    pid: int


ECHO = Method("echo", EchoRequest, EchoResponse)
UNKNOWN = Method("nope", EchoRequest, EchoResponse)


@pytest.fixture
def config():
    base = Path(tempfile.mkdtemp(prefix="cxt-", dir="/tmp"))
    yield Config(paths=PathsConfig(run_dir=str(base / "run"), state_dir=str(base / "state"),
                                   log_dir=str(base / "log")))
    shutil.rmtree(base, ignore_errors=True)


def _server(config: Config, calls: list[str] | None = None) -> DaemonServer:
    server = DaemonServer("echo", config, Tracing("echo", config.tracing))

    async def echo(req: EchoRequest) -> EchoResponse:
        if calls is not None:
            calls.append(req.text)
        if req.text == "missing":
            raise NotFound("no such thing")
        await asyncio.sleep(req.delay)
        return EchoResponse(req.text, os.getpid())

    server.register(ECHO, echo)
    return server


# The echo daemon as a separate process, for the restart tests.
_ECHO_DAEMON = textwrap.dedent("""
    import asyncio, sys
    from shared.config import Config, PathsConfig
    from tests.foundation.test_transport import _server
    run_dir = sys.argv[1]
    config = Config(paths=PathsConfig(run_dir=run_dir))
    asyncio.run(_server(config).serve())
""")


def _spawn_echo(config: Config) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _ECHO_DAEMON, config.paths.run_dir], cwd=REPO)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def _until_connected(client: DaemonClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.connected:
        assert time.monotonic() < deadline, "client never connected"
        await asyncio.sleep(0.01)


def test_typed_call_round_trip_and_typed_errors(config):
    async def main():
        task = asyncio.create_task(_server(config).serve())
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        await _until_connected(client)
        assert (await client.call(ECHO, EchoRequest("hi"))).text == "hi"
        with pytest.raises(NotFound, match="no such thing"):
            await client.call(ECHO, EchoRequest("missing"))
        with pytest.raises(Unimplemented):
            await client.call(UNKNOWN, EchoRequest("x"))
        client.close()
        task.cancel()

    asyncio.run(main())


def test_concurrent_calls_are_served_concurrently(config):
    async def main():
        task = asyncio.create_task(_server(config).serve())
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        await _until_connected(client)
        started = time.monotonic()
        results = await asyncio.gather(*(client.call(ECHO, EchoRequest(str(i), 0.3)) for i in range(32)))
        elapsed = time.monotonic() - started
        assert [r.text for r in results] == [str(i) for i in range(32)]
        assert elapsed < 1.5, f"32 calls of 0.3 s took {elapsed:.2f}s: not concurrent"
        client.close()
        task.cancel()

    asyncio.run(main())


def test_deadline_is_enforced_on_both_sides(config):
    async def main():
        calls: list[str] = []
        task = asyncio.create_task(_server(config, calls).serve())
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        await _until_connected(client)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await client.call(ECHO, EchoRequest("slow", 5.0), timeout=0.2)
        assert time.monotonic() - started < 1.0
        client.close()
        task.cancel()

    asyncio.run(main())


def test_malformed_request_gets_invalid_argument_not_a_crash(config):
    async def main():
        task = asyncio.create_task(_server(config).serve())
        sock = pynng.Req0(dial=config.ipc_address("echo"))
        for junk in (b"\xc1garbage", msgpack.packb([1, "echo", 0, "", {"text": 5}])):
            await sock.asend(junk)
            ok, err = msgpack.unpackb(await sock.arecv())
            assert not ok and err[0] == InvalidArgument.code.value
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        await _until_connected(client)
        assert (await client.call(ECHO, EchoRequest("still alive"))).text == "still alive"
        sock.close()
        client.close()
        task.cancel()

    asyncio.run(main())


def test_down_daemon_fails_fast_and_next_call_after_restart_succeeds(config):
    async def main():
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await client.call(ECHO, EchoRequest("x"), timeout=10)
        assert time.monotonic() - started < 1.0, "a down daemon must fail fast, not wait for the deadline"
        proc = _spawn_echo(config)
        try:
            await _until_connected(client)
            first = await client.call(ECHO, EchoRequest("a"), timeout=5)
            _stop(proc)
            async with asyncio.timeout(5):
                while client.connected:
                    await asyncio.sleep(0.01)
            proc = _spawn_echo(config)
            await _until_connected(client)
            second = await client.call(ECHO, EchoRequest("b"), timeout=5)
            assert second.pid != first.pid
        finally:
            _stop(proc)
        client.close()

    asyncio.run(main())


def test_call_in_flight_when_daemon_dies_fails_unavailable_and_is_not_rerun(config, tmp_path):
    async def main():
        proc = _spawn_echo(config)
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        await _until_connected(client)
        call = asyncio.create_task(client.call(ECHO, EchoRequest("long", 3.0), timeout=20))
        await asyncio.sleep(0.3)
        _stop(proc)
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await call
        assert time.monotonic() - started < 1.0
        # A new daemon must not receive the old request again (nng REQ resend).
        calls: list[str] = []
        task = asyncio.create_task(_server(config, calls).serve())
        await _until_connected(client)
        await asyncio.sleep(0.5)
        assert "long" not in calls
        client.close()
        task.cancel()

    asyncio.run(main())


def test_oversized_message_is_refused_by_the_receiver(config):
    async def main():
        task = asyncio.create_task(_server(config).serve())
        client = DaemonClient("echo", config, Tracing("t", config.tracing))
        await _until_connected(client)
        with pytest.raises((Unavailable, DeadlineExceeded)):
            await client.call(ECHO, EchoRequest("x" * (config.transport.max_message_bytes + 10)), timeout=1)
        assert (await client.call(ECHO, EchoRequest("small"), timeout=5)).text == "small"
        client.close()
        task.cancel()

    asyncio.run(main())


_PUBLISHER = textwrap.dedent("""
    import sys, time
    from shared.config import Config, PathsConfig
    from shared.transport import EventPublisher
    config = Config(paths=PathsConfig(run_dir=sys.argv[1]))
    pub = EventPublisher("echo", config)
    while True:
        pub.publish("tick", {"from": sys.argv[2]})
        time.sleep(0.02)
""")


def test_pub_sub_survives_publisher_and_subscriber_restarts(config):
    def publisher(tag: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", _PUBLISHER, config.paths.run_dir, tag], cwd=REPO)

    async def first_from(tag: str, timeout: float = 5.0) -> None:
        sub = EventSubscriber("echo", config, ("tick",))
        connects: list[int] = []
        sub.on_connect(lambda: connects.append(1))
        async with asyncio.timeout(timeout):
            async for topic, payload in sub.events():
                if topic == "tick" and payload["from"] == tag:
                    break
        sub.close()

    async def main():
        pub = publisher("one")
        sub = EventSubscriber("echo", config, ("tick",))
        seen: list[str] = []
        reconnects: list[int] = []
        sub.on_connect(lambda: reconnects.append(1))

        async def consume():
            async for _topic, payload in sub.events():
                seen.append(payload["from"])

        consumer = asyncio.create_task(consume())
        try:
            await asyncio.sleep(0.5)
            assert "one" in seen
            _stop(pub)
            pub = publisher("two")
            async with asyncio.timeout(5):
                while "two" not in seen:
                    await asyncio.sleep(0.02)
            assert len(reconnects) >= 2, "the subscriber must be told it reconnected, to resync"
            # And a subscriber that restarts picks the stream up again.
            await first_from("two")
        finally:
            consumer.cancel()
            sub.close()
            _stop(pub)

    asyncio.run(main())


def test_ipc_directory_is_root_only(config):
    publisher = EventPublisher("echo", config)
    try:
        mode = config.ipc_dir.stat().st_mode & 0o777
        assert mode == 0o700
    finally:
        publisher.close()
