"""streamd: the streaming server as a daemon of its own (see ARCHITECTURE.md, Streaming).

The gateway prepares sessions over nng (shared.schema.streamd); clients then connect to
the HTTP server this runs. Keeping it out of the gateway lets a long exec or attach
survive a restart of the gateway or any other daemon: a session needs nothing but what
its prepare call carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from services.gateway.streaming.server import Prepared, StreamServer
from shared.daemon import DaemonContext, Readiness, when_ready
from shared.errors import InvalidArgument
from shared.schema.streamd import (
    PREPARE_ATTACH,
    PREPARE_EXEC,
    PREPARE_PORT_FORWARD,
    AttachSession,
    ExecSession,
    PortForwardSession,
    SessionUrl,
)
from shared.transport import DaemonServer


class StreamdService:
    def __init__(self, ctx: DaemonContext) -> None:
        # Scratch files (exec pid files) die with the process's sessions: tmpfs, wiped at each start.
        self._scratch = Path(ctx.config.paths.run_dir) / "streamd"
        self.server = StreamServer(ctx.config.streamd, self._scratch)
        self._listening = asyncio.Event()

    def register(self, server: DaemonServer) -> None:
        server.register(PREPARE_EXEC, when_ready(self._listening, self.prepare_exec))
        server.register(PREPARE_ATTACH, when_ready(self._listening, self.prepare_attach))
        server.register(PREPARE_PORT_FORWARD, when_ready(self._listening, self.prepare_port_forward))

    async def run(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch.mkdir(parents=True, mode=0o700)
        await self.server.start()
        self._listening.set()
        try:
            await asyncio.Event().wait()  # sessions run as the server's tasks until shutdown
        finally:
            await self.server.close()
            with contextlib.suppress(OSError):
                shutil.rmtree(self._scratch)

    def readiness(self) -> Readiness:
        if not self._listening.is_set():
            return Readiness(False, "StreamdStarting", "the streaming server is not listening yet")
        return Readiness(True, info={"url": self.server.base_url, "sessions": str(self.server.active_sessions),
                                     "tokens": str(len(self.server.tokens))})

    async def prepare_exec(self, request: ExecSession) -> SessionUrl:
        if not request.cmd:
            raise InvalidArgument("exec: cmd is empty")
        if request.tty and not request.stdout:
            raise InvalidArgument("exec: a tty needs stdout")
        return self._prepare(request)

    async def prepare_attach(self, request: AttachSession) -> SessionUrl:
        return self._prepare(request)

    async def prepare_port_forward(self, request: PortForwardSession) -> SessionUrl:
        return self._prepare(request)

    def _prepare(self, request: Prepared) -> SessionUrl:
        return SessionUrl(self.server.prepare(request))
