"""The node's pod CIDR (CRI UpdateRuntimeConfig), kept across netd restarts.

The kubelet sends it once, when the node gets its CIDR, and again only when it changes,
so netd must remember it: it is written atomically to `<netd state>/node-network.json`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from services.netd.cni_runtime import split_cidrs
from shared.state import write_atomic

log = logging.getLogger(__name__)


class NodeNetwork:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.pod_cidr = ""  # normalized, comma-separated; "" until the kubelet sends one

    def load(self) -> None:
        try:
            doc = json.loads(self._path.read_bytes())
            self.pod_cidr = ",".join(split_cidrs(str(doc.get("pod_cidr", ""))))
        except FileNotFoundError:
            pass
        except Exception as exc:  # a damaged file must not stop netd; the kubelet sends it again
            log.error("unreadable %s ignored: %s", self._path, exc)

    async def set(self, pod_cidr: str) -> None:
        normalized = ",".join(split_cidrs(pod_cidr))
        if normalized == self.pod_cidr:
            return
        data = json.dumps({"pod_cidr": normalized}).encode()
        await asyncio.to_thread(write_atomic, self._path, data)
        self.pod_cidr = normalized
        log.info("pod CIDR is now %r", normalized)
