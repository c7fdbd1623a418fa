"""netd's service: for now its health, derived from the CNI configuration it would use."""

from __future__ import annotations

from pathlib import Path

from shared.daemon import DaemonContext, Readiness
from shared.transport import DaemonServer

_CNI_SUFFIXES = (".conf", ".conflist", ".json")


class NetdService:
    def __init__(self, ctx: DaemonContext) -> None:
        self._conf_dir = Path(ctx.config.netd.cni_conf_dir)

    def register(self, server: DaemonServer) -> None:
        pass

    async def run(self) -> None:
        return

    def readiness(self) -> Readiness:
        # The kubelet reports the node NotReady until a CNI network is configured.
        try:
            names = sorted(p.name for p in self._conf_dir.iterdir() if p.suffix in _CNI_SUFFIXES)
        except OSError:
            names = []
        if not names:
            return Readiness(False, "NetworkPluginNotReady",
                             f"no CNI configuration in {self._conf_dir}")
        return Readiness(True, info={"cni_config": names[0]})
