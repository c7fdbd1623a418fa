"""Which seccomp profile a container gets, rendered as OCI `linux.seccomp`.

The CRI's `seccomp` field wins; without it the deprecated `seccomp_profile_path` string
decides, and an empty one means unconfined, as with containerd and as the CRI conformance
tests expect (a kubelet that wants RuntimeDefault says so: its SeccompDefault feature sends
it explicitly). A privileged container is unconfined.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from services.monitord.spec import seccomp_default
from shared.cri import api_pb2
from shared.errors import FailedPrecondition, InvalidArgument

RUNTIME_DEFAULT = "runtime/default"
UNCONFINED = "unconfined"


@dataclass(frozen=True)
class SeccompChoice:
    kind: str  # RUNTIME_DEFAULT, UNCONFINED or "localhost"
    path: str = ""  # the profile file, for "localhost"


def seccomp_choice(
    sc: api_pb2.LinuxContainerSecurityContext, localhost_root: str = "/var/lib/kubelet/seccomp"
) -> SeccompChoice:
    if sc.privileged:
        return SeccompChoice(UNCONFINED)
    if sc.HasField("seccomp"):
        profile = sc.seccomp
        if profile.profile_type == api_pb2.SecurityProfile.Unconfined:
            return SeccompChoice(UNCONFINED)
        if profile.profile_type == api_pb2.SecurityProfile.Localhost:
            return SeccompChoice("localhost", _localhost_path(profile.localhost_ref, localhost_root))
        return SeccompChoice(RUNTIME_DEFAULT)
    legacy = sc.seccomp_profile_path
    if legacy in (RUNTIME_DEFAULT, "docker/default"):
        return SeccompChoice(RUNTIME_DEFAULT)
    if legacy in ("", UNCONFINED):  # nothing asked: unconfined, as containerd and the CRI tests expect
        return SeccompChoice(UNCONFINED)
    if legacy.startswith("localhost/"):
        return SeccompChoice("localhost", _localhost_path(legacy.removeprefix("localhost/"), localhost_root))
    raise InvalidArgument(f"unknown seccomp profile {legacy!r}")


def _localhost_path(ref: str, root: str) -> str:
    if not ref:
        raise InvalidArgument("seccomp profile Localhost needs a localhost_ref")
    # The kubelet sends absolute paths; a relative one is relative to its seccomp root, as before 1.25.
    return os.path.normpath(ref if os.path.isabs(ref) else os.path.join(root, ref))


def seccomp_profile(
    choice: SeccompChoice, capabilities: frozenset[str], configured_default: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The OCI profile for the choice, None for unconfined; conditional rules are evaluated
    against the container's effective capabilities."""
    if choice.kind == UNCONFINED:
        return None
    if choice.kind == "localhost":
        return _to_oci(load_profile(choice.path), capabilities)
    if configured_default is not None:
        return _to_oci(configured_default, capabilities)
    return default_profile(capabilities)


def load_profile(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"seccomp profile {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"seccomp profile {path} cannot be read: {exc}") from exc
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise InvalidArgument(f"seccomp profile {path} has no defaultAction")
    return profile


def default_profile(capabilities: frozenset[str]) -> dict[str, Any]:
    allowed = set(seccomp_default.ALLOWED_SYSCALLS)
    for capability, names in seccomp_default.CAPABILITY_SYSCALLS.items():
        if capability in capabilities:
            allowed.update(names)
    syscalls: list[dict[str, Any]] = [{"names": sorted(allowed), "action": "SCMP_ACT_ALLOW"}]
    if "CAP_SYS_ADMIN" in capabilities:
        syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW"})
    else:
        # clone itself is needed by every fork and thread; only the namespace flags are refused.
        flags = seccomp_default.CLONE_NAMESPACE_FLAGS
        syscalls.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": flags, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
        # clone3 hides its flags in a struct the filter cannot read: ENOSYS makes libcs fall back to clone.
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": seccomp_default.ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": seccomp_default.EPERM,
        "architectures": list(seccomp_default.ARCHITECTURES),
        "syscalls": syscalls,
    }


def _to_oci(profile: dict[str, Any], capabilities: frozenset[str]) -> dict[str, Any]:
    """Accept OCI profiles and the Docker/containers format (archMap, includes/excludes)."""
    if not isinstance(profile.get("syscalls", []), list):
        raise FailedPrecondition("seccomp profile: syscalls is not a list")
    out = {k: v for k, v in profile.items() if k not in ("archMap", "syscalls", "includes", "excludes")}
    if "architectures" not in out and "archMap" in profile:
        arches: list[str] = []
        for entry in profile["archMap"]:
            arches.extend([entry["architecture"], *entry.get("subArchitectures", [])])
        out["architectures"] = arches
    syscalls = []
    for rule in profile.get("syscalls", []):
        if not _applies(rule, capabilities):
            continue
        names = rule.get("names") or ([rule["name"]] if "name" in rule else [])
        kept = {k: v for k, v in rule.items() if k not in ("includes", "excludes", "name", "comment")}
        kept["names"] = names
        syscalls.append(kept)
    out["syscalls"] = syscalls
    return out


def _applies(rule: dict[str, Any], capabilities: frozenset[str]) -> bool:
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps") and not set(includes["caps"]) <= capabilities:
        return False
    return not (excludes.get("caps") and set(excludes["caps"]) & capabilities)
