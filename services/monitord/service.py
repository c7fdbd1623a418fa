"""monitord's service: for now its health, derived from the configured runtimes and conmon."""

from __future__ import annotations

import os

from shared.daemon import DaemonContext, Readiness
from shared.transport import DaemonServer


class MonitordService:
    def __init__(self, ctx: DaemonContext) -> None:
        self._config = ctx.config.monitord

    def register(self, server: DaemonServer) -> None:
        pass

    async def run(self) -> None:
        return

    def readiness(self) -> Readiness:
        missing = [p for p in (self._config.conmon, self._config.runtimes[self._config.default_runtime].path)
                   if not os.access(p, os.X_OK)]
        if missing:
            return Readiness(False, "RuntimeNotInstalled", f"not executable: {', '.join(missing)}")
        return Readiness(True, info={"default_runtime": self._config.default_runtime})
