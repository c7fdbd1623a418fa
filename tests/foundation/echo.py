"""An echo daemon for the transport tests, in-process or as its own process, that keeps a journal.

The journal records, from the daemon's side, each call starting, finishing and being cancelled
("start:x", "done:x", "cancelled:x"), so tests can assert what the daemon did, not only what the
client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.config import Config, PathsConfig, TransportConfig
from shared.errors import NotFound
from shared.schema.common import HEALTH, Health, HealthRequest
from shared.tracing import Tracing
from shared.transport import DaemonClient, DaemonServer
from shared.wire import Method
from tests.support.runtime import REPO


@dataclass(frozen=True)
class EchoRequest:
    text: str
    delay: float = 0.0
    cleanup: float = 0.0  # seconds a cancelled call spends cleaning up before "cleaned:<text>"


@dataclass(frozen=True)
class EchoResponse:
    text: str
    pid: int


ECHO = Method("echo", EchoRequest, EchoResponse)
UNKNOWN = Method("nope", EchoRequest, EchoResponse)


def make_config(base: Path, workers: int = 64) -> Config:
    return Config(paths=PathsConfig(run_dir=str(base / "run"), state_dir=str(base / "state"),
                                    log_dir=str(base / "log")),
                  transport=TransportConfig(workers=workers))


@contextlib.contextmanager
def temp_config(workers: int = 64) -> Iterator[Config]:
    base = Path(tempfile.mkdtemp(prefix="cxt-", dir="/tmp"))
    try:
        yield make_config(base, workers)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def echo_server(config: Config, journal: Callable[[str], None] | None = None) -> DaemonServer:
    server = DaemonServer("echo", config, Tracing("echo", config.tracing))
    note = journal or (lambda _entry: None)

    async def echo(req: EchoRequest) -> EchoResponse:
        note(f"start:{req.text}")
        if req.text == "missing":
            raise NotFound("no such thing")
        try:
            await asyncio.sleep(req.delay)
        except asyncio.CancelledError:
            note(f"cancelled:{req.text}")
            if req.cleanup:
                await asyncio.sleep(req.cleanup)
                note(f"cleaned:{req.text}")
            raise
        note(f"done:{req.text}")
        return EchoResponse(req.text, os.getpid())

    async def health(_: HealthRequest) -> Health:
        return Health("echo", os.getpid(), 0.0, True)

    server.register(ECHO, echo)
    server.register(HEALTH, health)
    return server


@contextlib.asynccontextmanager
async def serving(server: DaemonServer) -> AsyncIterator[DaemonServer]:
    task = asyncio.create_task(server.serve())
    try:
        yield server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def client_of(config: Config, connected: bool = True) -> AsyncIterator[DaemonClient]:
    client = DaemonClient("echo", config, Tracing("t", config.tracing))
    try:
        if connected:
            # Both lanes: the control one carries health and cancellations.
            await until(lambda: client.connected and client.control_connected, "the client never connected")
        yield client
    finally:
        client.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> float:
    """Wait for `predicate`; return how long it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, what
        await asyncio.sleep(0.005)
    return time.monotonic() - started


# The echo daemon as its own process; its journal goes to a file, one entry a line.
_ECHO_DAEMON = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from tests.foundation.echo import echo_server, make_config
    config = make_config(Path(sys.argv[1]), workers=int(sys.argv[3]))
    journal = open(sys.argv[2], "a", buffering=1)
    asyncio.run(echo_server(config, lambda entry: print(entry, file=journal)).serve())
""")


class EchoProcess:
    """The echo daemon in a process of its own, with its journal file."""

    def __init__(self, config: Config, journal: Path) -> None:
        self.journal_path = journal
        journal.touch()
        base = Path(config.paths.run_dir).parent
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_DAEMON, str(base), str(journal),
                                      str(config.transport.workers)], cwd=REPO)

    def journal(self) -> list[str]:
        return self.journal_path.read_text().split()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@contextlib.contextmanager
def echo_process(config: Config, journal: Path) -> Iterator[EchoProcess]:
    daemon = EchoProcess(config, journal)
    try:
        yield daemon
    finally:
        daemon.kill()
