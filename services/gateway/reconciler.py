"""Removes what a crash left without an owner (see ARCHITECTURE.md, "Pods and containers").

monitord's records own everything made for a pod or container elsewhere: a rootfs in
storaged belongs to a container record, a network in netd to a sandbox record. A
gateway or daemon killed between two steps of a create or remove leaves either a
CREATING record in monitord or a resource whose owner record does not exist. Both are
removed here, unless the gateway is working on that ID right now (`Inflight`).
Runs at start, when a daemon (re)starts, and every `gateway.reconcile_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import CriplexError
from shared.schema.monitord import (
    LIST_STATE,
    REMOVE_CONTAINER,
    REMOVE_SANDBOX,
    ContainerRef,
    ContainerState,
    ListStateRequest,
    SandboxRef,
    SandboxState,
)
from shared.schema.netd import LIST_NETWORKS, REMOVE_NETWORK, ListNetworksRequest, RemoveNetworkRequest
from shared.schema.storaged import LIST_ROOTFS, REMOVE_ROOTFS, ListRootfsRequest, RemoveRootfsRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = logging.getLogger(__name__)

_CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Sweep:
    """What one pass removed."""

    containers: tuple[str, ...] = ()
    sandboxes: tuple[str, ...] = ()
    rootfs: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.containers or self.sandboxes or self.rootfs or self.networks)


class Reconciler:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._wake = asyncio.Event()
        self._wake.set()
        self.passes = 0
        for client in gw.clients.values():
            client.on_connect(self._wake.set)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        interval = self._gw.config.gateway.reconcile_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            # Let a daemon that just connected finish its own start-up recovery first.
            await asyncio.sleep(0.2)
            try:
                swept = await self.reconcile()
            except CriplexError as exc:
                log.info("reconcile skipped: %s", exc.message)
                continue
            if swept:
                log.warning("reconciler removed leftovers: %s", swept)

    async def reconcile(self) -> Sweep:
        gw = self._gw
        with gw.inflight.watch() as busy:
            state = await gw.monitord.call(LIST_STATE, ListStateRequest(), _CALL_TIMEOUT_S)
            rootfs = await gw.storaged.call(LIST_ROOTFS, ListRootfsRequest(), _CALL_TIMEOUT_S)
            networks = await gw.netd.call(LIST_NETWORKS, ListNetworksRequest(), _CALL_TIMEOUT_S)
            stale_containers = [c.id for c in state.containers
                                if c.state is ContainerState.CREATING and c.id not in busy]
            stale_sandboxes = [s.id for s in state.sandboxes
                               if s.state is SandboxState.CREATING and s.id not in busy]
            owners = ({c.id for c in state.containers} | {s.infra_container_id for s in state.sandboxes}) - set(
                stale_containers)
            networked = {s.id for s in state.sandboxes if s.state is SandboxState.READY}
            orphan_rootfs = [c for c in rootfs.container_ids if c not in owners and c not in busy]
            # A stopped pod's network is released too: StopPodSandbox may have failed to.
            orphan_networks = [n.sandbox_id for n in networks.networks
                               if n.sandbox_id not in networked and n.sandbox_id not in busy]
            self.passes += 1
            results = await asyncio.gather(
                *(gw.monitord.call(REMOVE_CONTAINER, ContainerRef(c), _CALL_TIMEOUT_S) for c in stale_containers),
                *(gw.monitord.call(REMOVE_SANDBOX, SandboxRef(s), _CALL_TIMEOUT_S) for s in stale_sandboxes),
                return_exceptions=True,
            )
            results += await asyncio.gather(
                *(gw.storaged.call(REMOVE_ROOTFS, RemoveRootfsRequest(c), _CALL_TIMEOUT_S)
                  for c in {*orphan_rootfs, *(c for c in stale_containers if c in rootfs.container_ids)}),
                *(gw.netd.call(REMOVE_NETWORK, RemoveNetworkRequest(n), _CALL_TIMEOUT_S)
                  for n in {*orphan_networks}),
                return_exceptions=True,
            )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("reconciler: a removal failed (next pass retries): %s", result)
        return Sweep(tuple(stale_containers), tuple(stale_sandboxes), tuple(orphan_rootfs), tuple(orphan_networks))
