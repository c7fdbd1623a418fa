"""The container's capability sets.

Unprivileged containers start from CRI-O's default set. "All capabilities" (privileged, or
add ["ALL"]) means the host's bounding set, never the kernel's full list: a capability the
host itself lacks (CAP_SYS_RESOURCE here) cannot be granted and runc would fail on it.
"""

from __future__ import annotations

from typing import Any

from shared.cri import api_pb2
from shared.errors import InvalidArgument

DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
)

# Every capability the kernel defines (linux/capability.h, up to 6.x); names outside it are refused.
KNOWN_CAPABILITIES = frozenset(
    {
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
        "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
        "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    }
)  # fmt: skip


def capability_name(name: str) -> str:
    """"net_admin", "NET_ADMIN", "CAP_NET_ADMIN" -> "CAP_NET_ADMIN"."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in KNOWN_CAPABILITIES:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


def _is_all(name: str) -> bool:
    return name.strip().upper() in ("ALL", "CAP_ALL")


def container_capabilities(
    caps: api_pb2.Capability, privileged: bool, bounding: frozenset[str]
) -> dict[str, list[str]]:
    """The OCI `process.capabilities` object.

    As CRI-O: add ALL, then drop ALL, then each named add, then each named drop, so a
    capability both added and dropped ends up dropped."""
    if privileged:
        everything = sorted(bounding)
        return _sets(everything, [])
    chosen = [c for c in DEFAULT_CAPABILITIES if c in bounding]
    if any(_is_all(c) for c in caps.add_capabilities):
        chosen = sorted(bounding)
    if any(_is_all(c) for c in caps.drop_capabilities):
        chosen = []
    for name in caps.add_capabilities:
        if _is_all(name):
            continue
        full = _grantable(name, bounding)
        if full not in chosen:
            chosen.append(full)
    dropped = {capability_name(n) for n in caps.drop_capabilities if not _is_all(n)}
    chosen = [c for c in chosen if c not in dropped]
    ambient = []
    for name in caps.add_ambient_capabilities:
        full = _grantable(name, bounding)
        if full not in ambient:
            ambient.append(full)
        # The kernel keeps an ambient capability only while it is permitted and inheritable.
        if full not in chosen:
            chosen.append(full)
    return _sets(chosen, ambient)


def _grantable(name: str, bounding: frozenset[str]) -> str:
    full = capability_name(name)
    if full not in bounding:
        raise InvalidArgument(f"capability {full} is not in the host's bounding set and cannot be granted")
    return full


def _sets(chosen: list[str], ambient: list[str]) -> dict[str, list[str]]:
    result: dict[str, Any] = {
        "bounding": list(chosen),
        "effective": list(chosen),
        "permitted": list(chosen),
    }
    if ambient:
        result["inheritable"] = list(ambient)
        result["ambient"] = list(ambient)
    return result
