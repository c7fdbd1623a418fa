"""netd's CNI cache: what DEL needs after a restart, kept as libcni keeps it.

Two kinds of files under `<netd state>/cni/`:

- `configs/<sha256>.json`: a copy of each network config a pod was attached with,
  written once per config, before the first ADD that uses it. A pod record names its
  digest, so a DEL can run with the very config of the ADD even when the conf dir has
  changed since and the ADD never finished (DEL without prevResult is allowed).
- `results/<network>-<sandbox id>-<ifname>.json`: one per attachment: the config,
  CNI_ARGS, the capability args and the result. It is written twice, each time in one
  atomic write: just before the ADD chain without a result (a DEL after a crash mid-ADD
  still gets the pod's runtimeConfig: portmap's DEL removes nothing without its
  portMappings), and right after it with the result (`cniCacheV1`, libcni's layout with the config's bytes
  as a string rather than base64). DEL and CHECK pass that result as prevResult.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.state import fsync_dir, write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedAttachment:
    network_name: str
    container_id: str
    ifname: str
    config: bytes  # the network config list as JSON
    cni_args: str
    capability_args: dict[str, Any]
    result: dict[str, Any] | None  # None: written before the ADD, which has not finished


class CniCache:
    def __init__(self, directory: Path) -> None:
        self._configs = directory / "configs"
        self._results = directory / "results"
        self._known_configs: set[str] = set()

    def load(self) -> None:
        """Create the directories and learn which config copies exist (at start, in a thread)."""
        for directory in (self._configs, self._results):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for leftover in directory.glob(".tmp-*"):
                leftover.unlink(missing_ok=True)
        self._known_configs = {p.stem for p in self._configs.glob("*.json")}

    async def keep_config(self, digest: str, raw: bytes) -> None:
        if digest not in self._known_configs:
            await asyncio.to_thread(write_atomic, self._configs / f"{digest}.json", raw)
            self._known_configs.add(digest)

    def config(self, digest: str) -> bytes | None:
        try:
            return (self._configs / f"{digest}.json").read_bytes()
        except OSError:
            return None

    def drop_configs_except(self, digests: set[str]) -> None:
        for digest in self._known_configs - digests:
            (self._configs / f"{digest}.json").unlink(missing_ok=True)
        self._known_configs &= digests

    def _result_path(self, network_name: str, container_id: str, ifname: str) -> Path:
        return self._results / f"{network_name}-{container_id}-{ifname}.json"

    async def put_result(self, entry: CachedAttachment) -> None:
        doc = {"kind": "cniCacheV1", "containerId": entry.container_id, "ifName": entry.ifname,
               "networkName": entry.network_name, "config": entry.config.decode(),
               "cniArgs": entry.cni_args, "capabilityArgs": entry.capability_args, "result": entry.result}
        data = json.dumps(doc, separators=(",", ":")).encode()
        await asyncio.to_thread(write_atomic, self._result_path(entry.network_name, entry.container_id, entry.ifname),
                                data)

    def result(self, network_name: str, container_id: str, ifname: str) -> CachedAttachment | None:
        return _read_result(self._result_path(network_name, container_id, ifname))

    async def drop_result(self, network_name: str, container_id: str, ifname: str) -> None:
        path = self._result_path(network_name, container_id, ifname)
        if path.exists():
            await asyncio.to_thread(_unlink_durably, path)

    def results(self) -> list[CachedAttachment]:
        """Every readable cached result: for the cleanup at start."""
        found = [_read_result(path) for path in sorted(self._results.glob("*.json"))]
        return [cached for cached in found if cached is not None]


def _read_result(path: Path) -> CachedAttachment | None:
    try:
        doc = json.loads(path.read_bytes())
        return CachedAttachment(doc["networkName"], doc["containerId"], doc["ifName"],
                                doc["config"].encode(),
                                doc.get("cniArgs", ""), doc.get("capabilityArgs") or {}, doc.get("result"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # DEL goes on with the recorded config, without prevResult.
        log.error("unreadable CNI cache %s ignored: %s", path, exc)
        return None


def _unlink_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
