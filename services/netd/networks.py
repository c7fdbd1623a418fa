"""Pod networks: one record and one pinned network namespace per sandbox.

Order of steps, so that a kill -9 at any point leaves something the next start (or the
gateway's removal) can finish:

- create: record (naming the CNI network config about to be used), then pin, then CNI
  ADD (which keeps a copy of the config first and caches the result right after), then
  the record again with the pod's IPs;
- remove: CNI DEL (with the cached result, or the recorded config), then unpin, then
  delete the record.

A failed ADD is rolled back by the runner, with a DEL of the whole chain; if a plugin
whose ADD had succeeded fails that DEL, the record and the pin stay, so the gateway's
removal retries it. An ADD a crash interrupted (a record whose result is not cached) is
undone at the next start, and again by a create that retries it.

So a pin never exists without a record, except briefly during a removal; at start, pins
without a record are removed. A record whose pin is gone (the node rebooted and /run was
cleared, or a crash before the pin was made) stays listed, so the gateway removes it; a
create for it makes the namespace again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path

from services.netd.cni import CniRunner, left_behind
from shared.errors import CriplexError, InvalidArgument
from shared.locks import KeyedLock
from shared.nsfs import create_pinned, is_pinned, remove_pinned
from shared.schema.netd import CreateNetworkRequest, PodNetwork
from shared.state import RecordStore

log = logging.getLogger(__name__)

# The container-id rule of storaged (a 64-hex sandbox id fits): the id is also a file name.
_SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_sandbox_id(sandbox_id: str) -> None:
    if not _SANDBOX_ID.match(sandbox_id):
        raise InvalidArgument(f"sandbox id {sandbox_id!r:.150} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}")


class PodNetworks:
    def __init__(self, records_dir: Path, netns_dir: Path, cni: CniRunner) -> None:
        self.netns_dir = netns_dir
        self._records = RecordStore(records_dir, PodNetwork)
        self._cni = cni
        self._locks: KeyedLock[str] = KeyedLock()

    async def load(self) -> None:
        """Read the records and remove pins nobody records (before serving)."""
        await asyncio.to_thread(self._records.load)
        await asyncio.to_thread(self.netns_dir.mkdir, parents=True, exist_ok=True, mode=0o755)
        await self._cni.recover(self._records.values(), self.netns_dir)
        recorded = {Path(n.netns_path) for n in self._records.values()}
        for entry in await asyncio.to_thread(lambda: list(self.netns_dir.iterdir())):
            if entry not in recorded:
                # Left by a crash during a removal, after its record went.
                await self._remove_leftover(entry)
        for network in self._records.values():
            if not is_pinned(Path(network.netns_path)):
                log.warning("sandbox %s: netns %s is gone; kept listed for removal",
                            network.sandbox_id, network.netns_path)

    @staticmethod
    async def _remove_leftover(entry: Path) -> None:
        log.info("removing unrecorded netns pin %s", entry)
        try:
            if entry.is_dir() and not entry.is_mount():
                # Not ours to empty: whatever is inside may itself be mounted.
                await asyncio.to_thread(entry.rmdir)
            else:
                await remove_pinned(entry)
        except (OSError, CriplexError) as exc:
            log.error("cannot remove %s: %s", entry, exc)

    def list(self) -> list[PodNetwork]:
        return self._records.values()

    async def create(self, request: CreateNetworkRequest) -> PodNetwork:
        check_sandbox_id(request.sandbox_id)
        plan = self._cni.plan(request)  # no usable network, or bad annotations: fail before making anything
        async with self._locks.hold(request.sandbox_id):
            existing = self._records.get(request.sandbox_id)
            if existing is not None and is_pinned(Path(existing.netns_path)) and self._cni.attached(existing):
                return existing
            if existing is not None:
                # An earlier create died mid-ADD, or the namespace vanished: undo what it may have made.
                await self._cni.delete(existing)
            name, digest = (plan.network.name, plan.network.digest) if plan.network is not None else ("", "")
            network = PodNetwork(request.sandbox_id, str(self.netns_dir / request.sandbox_id),
                                 created_at=existing.created_at if existing is not None else time.time_ns(),
                                 cni_network=name, cni_config=digest)
            netns = Path(network.netns_path)
            try:
                # The record and the namespace at once: a pin that a crash leaves without its
                # record is removed at the next start (load), so neither has to wait for the other.
                await _all(self._records.put(request.sandbox_id, network), self._fresh_pin(netns),
                           self._cni.prepare(plan, request.sandbox_id))
                attached = await self._cni.add(plan, request.sandbox_id, netns)
            except BaseException as exc:
                if not left_behind(exc):
                    await self._undo_create(network, keep_record=existing is not None)
                raise
            network = replace(network, ips=attached.ips, interface=attached.interface)
            # The cached result and the record with the IPs are independent: write them at once.
            await _all(self._cni.commit(plan, request.sandbox_id, attached),
                       self._records.put(request.sandbox_id, network))
            return network

    @staticmethod
    async def _fresh_pin(netns: Path) -> None:
        await remove_pinned(netns)  # an empty file left by a crash before the mount, or a stale pin
        await create_pinned({"net": netns})

    async def _undo_create(self, network: PodNetwork, keep_record: bool) -> None:
        # The runner rolled its chain back; when it could not, the record and the pin stay
        # (see create), so the gateway's removal retries the DEL inside the namespace.
        try:
            await remove_pinned(Path(network.netns_path))
            if not keep_record:
                await self._records.delete(network.sandbox_id)
        except Exception:
            log.exception("sandbox %s: undoing a failed create", network.sandbox_id)

    async def remove(self, sandbox_id: str) -> bool:
        """Remove a sandbox's network; False when there was none (not an error)."""
        check_sandbox_id(sandbox_id)
        async with self._locks.hold(sandbox_id):
            network = self._records.get(sandbox_id)
            if network is None:
                # No record, so no pin of ours either, except one a crash left mid-removal.
                await remove_pinned(self.netns_dir / sandbox_id)
                return False
            await self._cni.detach(network)
            # After DEL, the cache entry, the pin and the record can go together: a pin left
            # without its record is removed at the next start, a record left without its pin
            # is removed again (its DEL finds nothing to do).
            await _all(self._cni.forget(network), remove_pinned(Path(network.netns_path)),
                       self._records.delete(sandbox_id))
            return True


async def _all(*steps: Awaitable[object]) -> None:
    """Run steps at once and wait for every one (so none is still running during a cleanup)."""
    for result in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result
