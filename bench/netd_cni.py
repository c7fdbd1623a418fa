"""netd's per-pod overhead over the bare CNI plugin chain: `python -m bench.netd_cni [pods]`.

Both sides pin a fresh network namespace the same way (nsfs) and run the same chain
(bridge + host-local, portmap, bandwidth) with prevResult; "direct" does only that, as a
minimal runtime would, while "netd" goes through PodNetworks (records, config copy,
result cache, rollback bookkeeping). Prints the median ADD+DEL per pod of each, and the
difference. Uses a bridge and subnet of its own, removed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time

from services.netd import cni as netd_cni
from services.netd.cni_exec import IFNAME
from shared.nsfs import create_pinned, remove_pinned
from shared.schema.netd import PortMapping, RemoveNetworkRequest
from tests.netd.cni_support import CniWorld, running


async def _plugin(path: str, env: dict[str, str], stdin: bytes) -> bytes:
    proc = await asyncio.create_subprocess_exec(path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise RuntimeError(f"{path}: {out!r} {err!r}")
    return out


async def _direct(world: CniWorld, conflist: dict, sandbox_id: str, port: int) -> None:
    netns = world.base / "direct-ns"
    await create_pinned({"net": netns})
    env = {**os.environ, "CNI_CONTAINERID": sandbox_id, "CNI_NETNS": str(netns), "CNI_IFNAME": IFNAME,
           "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={sandbox_id}"}
    runtime = {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}
    prev = None
    for plugin in conflist["plugins"]:
        conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if "portMappings" in plugin.get("capabilities", {}):
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        prev = json.loads(await _plugin(f"/usr/lib/cni/{plugin['type']}", {**env, "CNI_COMMAND": "ADD"},
                                        json.dumps(conf).encode()))
    for plugin in reversed(conflist["plugins"]):
        conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"], "prevResult": prev}
        if "portMappings" in plugin.get("capabilities", {}):
            conf["runtimeConfig"] = runtime
        await _plugin(f"/usr/lib/cni/{plugin['type']}", {**env, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode())
    await remove_pinned(netns)


class _PluginTimer:
    """Times netd's own plugin calls, so netd's bookkeeping can be told apart from the plugins'."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._run = netd_cni.run_plugin

    async def __call__(self, *args: object, **kwargs: object) -> object:
        started = time.perf_counter()
        try:
            return await self._run(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - started


async def main(pods: int) -> None:
    world = CniWorld()
    timer = _PluginTimer()
    netd_cni.run_plugin = timer
    try:
        conflist = json.loads(world.standard().read_text())
        direct, through, own = [], [], []
        async with running(world.config) as netd:
            for i in range(pods):
                async def bare(i: int = i) -> None:
                    start = time.perf_counter()
                    await _direct(world, conflist, f"{i:064x}", 40000 + i)
                    direct.append(time.perf_counter() - start)

                async def via_netd(i: int = i) -> None:
                    request = world.request(ports=(PortMapping("tcp", 80, 41000 + i),))
                    timer.spent = 0.0
                    start = time.perf_counter()
                    await netd.create_network(request)
                    await netd.remove_network(RemoveNetworkRequest(request.sandbox_id))
                    through.append(time.perf_counter() - start)
                    own.append(through[-1] - timer.spent)

                # Alternate which goes first: iptables is slower right after another DEL.
                for step in ((bare, via_netd) if i % 2 == 0 else (via_netd, bare)):
                    await step()
        d, n = statistics.median(direct) * 1000, statistics.median(through) * 1000
        print(f"{pods} pods, ADD+DEL per pod (median): direct {d:.1f} ms, netd {n:.1f} ms, "
              f"difference {n - d:+.1f} ms")
        # The plugins' own time swings by tens of ms with iptables; netd's time outside them does not.
        outside = statistics.median(own) * 1000
        print(f"netd's time outside the plugins (namespace pin included), median: {outside:.1f} ms")
    finally:
        await world.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
