"""OCI hooks from hooks.d directories (the containers/common "1.0.0" hook files).

Files are read in name order; a file in a later directory replaces one of the same name in an
earlier directory (the admin's /etc overrides the package's /usr/share). A hook is injected
when ANY of its `when` conditions matches the container; patterns are searched, not anchored
(anchor them with ^ and $), as containers/common does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from shared.errors import FailedPrecondition

STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


@dataclass(frozen=True)
class HookFile:
    name: str
    hook: dict[str, Any]  # the OCI hook: path, args, env, timeout
    always: bool
    annotations: tuple[tuple[str, str], ...]  # (key regex, value regex)
    commands: tuple[str, ...]  # regexes over the process's args[0]
    has_bind_mounts: bool | None
    stages: tuple[str, ...]


def parse_hook_file(name: str, data: Any) -> HookFile:
    if not isinstance(data, dict) or data.get("version") != "1.0.0":
        raise FailedPrecondition(f"hook {name}: only version 1.0.0 hook files are supported")
    hook = data.get("hook")
    if not isinstance(hook, dict) or not isinstance(hook.get("path"), str) or not hook["path"]:
        raise FailedPrecondition(f"hook {name}: hook.path is required")
    when = data.get("when") or {}
    if not isinstance(when, dict) or not any(k in when for k in ("always", "annotations", "commands", "hasBindMounts")):
        raise FailedPrecondition(f"hook {name}: `when` needs at least one condition")
    stages = tuple(data.get("stages") or ())
    unknown = [s for s in stages if s not in STAGES]
    if not stages or unknown:
        raise FailedPrecondition(f"hook {name}: stages must be some of {', '.join(STAGES)}, got {list(stages)}")
    annotations = tuple((k, v) for k, v in (when.get("annotations") or {}).items())
    commands = tuple(when.get("commands") or ())
    for pattern in [*commands, *(p for pair in annotations for p in pair)]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise FailedPrecondition(f"hook {name}: invalid regular expression {pattern!r}: {exc}") from exc
    oci = {k: hook[k] for k in ("path", "args", "env", "timeout") if k in hook}
    has_bind = when.get("hasBindMounts")
    return HookFile(name, oci, bool(when.get("always")), annotations, commands, has_bind, stages)


def load_hook_files(dirs: tuple[str, ...]) -> list[HookFile]:
    by_name: dict[str, tuple[str, str]] = {}
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name.endswith(".json"):
                by_name[name] = (directory, name)
    hooks = []
    for name in sorted(by_name):
        path = os.path.join(*by_name[name])
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise FailedPrecondition(f"hook {path}: {exc}") from exc
        hooks.append(parse_hook_file(path, data))
    return hooks


def matches(hook: HookFile, annotations: dict[str, str], command: str, has_bind_mounts: bool) -> bool:
    if hook.always:
        return True
    for key_pattern, value_pattern in hook.annotations:
        if any(re.search(key_pattern, k) and re.search(value_pattern, v) for k, v in annotations.items()):
            return True
    if any(re.search(pattern, command) for pattern in hook.commands):
        return True
    return hook.has_bind_mounts is True and has_bind_mounts


def spec_hooks(
    hooks: list[HookFile], annotations: dict[str, str], command: str, has_bind_mounts: bool
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for hook in hooks:
        if matches(hook, annotations, command, has_bind_mounts):
            for stage in hook.stages:
                out.setdefault(stage, []).append(dict(hook.hook))
    return out
