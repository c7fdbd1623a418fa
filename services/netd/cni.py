"""The seam where CNI plugins will attach a pod's network namespace to the node's network.

Today netd gives a pod loopback only (`LoopbackOnly`); CNI ADD/DEL (plugin chains from
`netd.cni_conf_dir`, results, port mappings) come with the networking work and plug in
here without changing how namespaces and records are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shared.schema.netd import CreateNetworkRequest, PodNetwork


@dataclass(frozen=True)
class Attachment:
    """What attaching a netns produced: the pod's addresses (primary first) and its interface."""

    ips: tuple[str, ...] = ()
    interface: str = ""


class CniRunner(Protocol):
    async def add(self, request: CreateNetworkRequest, netns: Path) -> Attachment:
        """Attach the freshly made `netns` (CNI ADD); called once the namespace is pinned."""

    async def delete(self, network: PodNetwork) -> None:
        """Detach (CNI DEL) before the namespace is removed; must tolerate a half-made or gone netns."""


class LoopbackOnly:
    """No CNI yet: the namespace keeps only its loopback, which nsfs brought up."""

    async def add(self, request: CreateNetworkRequest, netns: Path) -> Attachment:
        return Attachment()

    async def delete(self, network: PodNetwork) -> None:
        return
