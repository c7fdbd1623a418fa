"""Container Device Interface: "vendor.com/class=name" devices from CDI spec files.

Spec files are JSON (`*.json`) in the configured directories; a later directory wins for a
device both define. YAML spec files are not read (no YAML parser here): a device only they
define is reported as such.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from services.monitord.spec.devices import stat_device
from shared.errors import FailedPrecondition, InvalidArgument


@dataclass
class ContainerEdits:
    """The CDI edits of all requested devices, merged in request order."""

    env: list[str] = field(default_factory=list)
    device_nodes: list[dict[str, Any]] = field(default_factory=list)
    device_rules: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    additional_gids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CdiDevice:
    kind: str  # vendor/class
    name: str
    spec_edits: dict[str, Any]  # the spec file's own containerEdits, applied with each of its devices
    device_edits: dict[str, Any]
    source: str


def parse_device_name(qualified: str) -> tuple[str, str]:
    kind, sep, name = qualified.partition("=")
    vendor, slash, cls = kind.partition("/")
    if not sep or not slash or not vendor or not cls or not name:
        raise InvalidArgument(f"CDI device {qualified!r} is not of the form vendor.com/class=name")
    return kind, name


def load_registry(dirs: tuple[str, ...]) -> tuple[dict[str, CdiDevice], bool]:
    """(qualified name -> device, whether some YAML spec was skipped)."""
    devices: dict[str, CdiDevice] = {}
    skipped_yaml = False
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name.endswith((".yaml", ".yml")):
                skipped_yaml = True
            if not name.endswith(".json"):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    spec = json.load(f)
            except (OSError, ValueError) as exc:
                raise FailedPrecondition(f"CDI spec {path}: {exc}") from exc
            for device in _spec_devices(spec, path):
                devices[f"{device.kind}={device.name}"] = device
    return devices, skipped_yaml


def _spec_devices(spec: Any, path: str) -> list[CdiDevice]:
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str) or "/" not in spec["kind"]:
        raise FailedPrecondition(f"CDI spec {path}: `kind` must be vendor/class")
    common = spec.get("containerEdits") or {}
    found = []
    for device in spec.get("devices") or []:
        if not isinstance(device, dict) or not device.get("name"):
            raise FailedPrecondition(f"CDI spec {path}: a device has no name")
        found.append(CdiDevice(spec["kind"], device["name"], common, device.get("containerEdits") or {}, path))
    return found


def resolve_devices(names: list[str], dirs: tuple[str, ...]) -> ContainerEdits:
    edits = ContainerEdits()
    if not names:
        return edits
    registry, skipped_yaml = load_registry(dirs)
    applied_specs: set[str] = set()
    for qualified in names:
        parse_device_name(qualified)
        device = registry.get(qualified)
        if device is None:
            hint = " (YAML CDI specs are not read; provide it as JSON)" if skipped_yaml else ""
            raise InvalidArgument(f"unresolvable CDI device {qualified}{hint}")
        if device.source not in applied_specs:
            applied_specs.add(device.source)
            apply_edits(edits, device.spec_edits)
        apply_edits(edits, device.device_edits)
    return edits


def apply_edits(edits: ContainerEdits, raw: dict[str, Any]) -> None:
    edits.env.extend(raw.get("env") or [])
    for node in raw.get("deviceNodes") or []:
        oci, rule = _device_node(node)
        edits.device_nodes.append(oci)
        edits.device_rules.append(rule)
    for m in raw.get("mounts") or []:
        edits.mounts.append(
            {
                "destination": m["containerPath"],
                "type": m.get("type", "bind"),
                "source": m["hostPath"],
                "options": list(m.get("options") or ["rbind", "rprivate"]),
            }
        )
    for hook in raw.get("hooks") or []:
        stage = hook.get("hookName")
        oci = {k: hook[k] for k in ("path", "args", "env", "timeout") if k in hook}
        edits.hooks.setdefault(stage, []).append(oci)
    edits.additional_gids.extend(int(g) for g in raw.get("additionalGIDs") or [])


def _device_node(node: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    path = node.get("path")
    if not path:
        raise InvalidArgument("CDI device node without a path")
    host_path = node.get("hostPath") or path
    if "major" in node and node.get("type") in ("c", "b", "u"):
        kind, major, minor = node["type"], int(node["major"]), int(node.get("minor", 0))
        mode, uid, gid = node.get("fileMode", 0o666), node.get("uid", 0), node.get("gid", 0)
    else:
        found = stat_device(host_path, path)
        if found is None:
            raise InvalidArgument(f"CDI device node {host_path} is not a device")
        kind, major, minor, mode, uid, gid = found.kind, found.major, found.minor, found.mode, found.uid, found.gid
    oci = {"path": path, "type": kind, "major": major, "minor": minor, "fileMode": node.get("fileMode", mode)}
    oci["uid"] = node.get("uid", uid)
    oci["gid"] = node.get("gid", gid)
    access = node.get("permissions") or "rwm"
    rule = {"allow": True, "type": "c" if kind == "u" else kind, "major": major, "minor": minor, "access": access}
    return oci, rule
