"""CNI network configurations: finding, parsing and validating them (CNI spec, "Configuration format").

A network is a list of plugins run in order. A `.conflist` holds that list; a `.conf`
(or `.json`) holding a single plugin is the list of one, as libcni reads it. Parsing
is pure; `load_network` adds the directory listing and the plugin lookup, and runs in
the readiness watch's worker thread, never on a pod's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import FailedPrecondition

PluginFinder = Callable[[str], str | None]

CONF_SUFFIXES = (".conf", ".conflist", ".json")
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
# A plugin's `type` is an executable's name in the bin dirs, never a path.
_PLUGIN_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
# CNI spec 1.0 "name"; it is also part of the result cache's file names.
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ConfigInvalid(FailedPrecondition):
    """The configured network cannot be used (unparsable, incomplete, or a plugin is missing)."""


@dataclass(frozen=True)
class Plugin:
    type: str
    path: str  # the executable found in the bin dirs
    conf: dict[str, Any]  # the plugin's object as configured (never mutated)
    capabilities: frozenset[str]  # the runtimeConfig keys it asks for


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    cni_version: str
    plugins: tuple[Plugin, ...]
    disable_check: bool
    source: str  # the file it came from
    raw: bytes  # the list as JSON, as cached and recorded
    digest: str  # sha256 of `raw`: names the copy kept for DEL after a crash


def version_at_least(version: str, floor: str) -> bool:
    return tuple(int(p) for p in version.split(".")) >= tuple(int(p) for p in floor.split("."))


def parse_network(data: bytes, source: str, find_plugin: PluginFinder | None = None) -> NetworkConfig:
    """Parse a `.conf` or `.conflist` document. `find_plugin(type) -> path | None` resolves each
    plugin (None: resolution is left out, as when a cached copy is read back)."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ConfigInvalid(f"CNI config {source} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigInvalid(f"CNI config {source} is not a JSON object")
    if "plugins" not in doc:
        # A single plugin's config is the list of one (libcni's ConfListFromConf).
        doc = {"cniVersion": doc.get("cniVersion"), "name": doc.get("name"), "plugins": [doc]}
        data = json.dumps(doc, separators=(",", ":")).encode()
    name, version = doc.get("name"), doc.get("cniVersion")
    if not isinstance(name, str) or not _NETWORK_NAME.match(name):
        raise ConfigInvalid(f"CNI config {source}: network name {name!r:.60} is not [A-Za-z0-9][A-Za-z0-9_.-]*")
    if version not in SUPPORTED_VERSIONS:
        raise ConfigInvalid(f"CNI config {source}: cniVersion {version!r} is not one of "
                            f"{', '.join(SUPPORTED_VERSIONS)}")
    entries = doc["plugins"]
    if not isinstance(entries, list) or not entries:
        raise ConfigInvalid(f"CNI config {source} has no plugins")
    if len(entries) > 1 and not version_at_least(version, "0.3.0"):
        raise ConfigInvalid(f"CNI config {source}: a plugin chain needs cniVersion 0.3.0 or later")
    plugins = []
    for index, entry in enumerate(entries):
        plugins.append(_parse_plugin(entry, index, source, find_plugin))
    disable_check = doc.get("disableCheck", False)
    if not isinstance(disable_check, bool):
        raise ConfigInvalid(f"CNI config {source}: disableCheck is not a boolean")
    return NetworkConfig(name, version, tuple(plugins), disable_check, source, data,
                         hashlib.sha256(data).hexdigest())


def _parse_plugin(entry: object, index: int, source: str, find_plugin: PluginFinder | None) -> Plugin:
    if not isinstance(entry, dict):
        raise ConfigInvalid(f"CNI config {source}: plugin {index} is not an object")
    kind = entry.get("type")
    if not isinstance(kind, str) or not _PLUGIN_TYPE.match(kind):
        raise ConfigInvalid(f"CNI config {source}: plugin {index} has no valid type")
    capabilities = entry.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise ConfigInvalid(f"CNI config {source}: plugin {kind}: capabilities is not an object")
    path = ""
    if find_plugin is not None:
        path = find_plugin(kind)
        if path is None:
            raise ConfigInvalid(f"CNI config {source}: plugin {kind!r} is not in the CNI bin dirs")
    return Plugin(kind, path, entry, frozenset(k for k, on in capabilities.items() if on is True))


def plugin_finder(bin_dirs: tuple[str, ...]) -> PluginFinder:
    def find(kind: str) -> str | None:
        for directory in bin_dirs:
            candidate = os.path.join(directory, kind)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        return None

    return find


def config_files(conf_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file())
    except OSError:
        return []


def load_network(conf_dir: Path, bin_dirs: tuple[str, ...], wanted: str = "") -> NetworkConfig:
    """The network pods get: the first file in lexical order, or the one whose network is `wanted`.

    Raises ConfigInvalid (with a message fit for NetworkReady=false) when there is none or it is broken."""
    files = config_files(conf_dir)
    if not files:
        raise ConfigInvalid(f"no CNI configuration in {conf_dir}")
    find = plugin_finder(bin_dirs)
    if not wanted:
        return parse_network(_read(files[0]), str(files[0]), find)
    for path in files:
        try:
            network = parse_network(_read(path), str(path))
        except ConfigInvalid:
            continue  # another network's file; only the wanted one must be valid
        if network.name == wanted:
            return parse_network(_read(path), str(path), find)
    raise ConfigInvalid(f"no CNI configuration in {conf_dir} names network {wanted!r}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigInvalid(f"cannot read CNI config {path}: {exc.strerror}") from exc
