"""The pod's sysctls, allowed only where they are namespaced to the pod.

A sysctl that is not namespaced would change the node for everyone; one whose namespace
the pod shares with the host (host network, host IPC) would too.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.errors import InvalidArgument
from shared.schema.monitord import SandboxRecord

_IPC_EXACT = ("kernel.sem",)
_IPC_PREFIXES = ("kernel.shm", "kernel.msg", "fs.mqueue.")
_UTS_EXACT = ("kernel.hostname", "kernel.domainname")
_SLASH_TO_DOT = str.maketrans("/.", "./")


def sysctl_namespace(key: str) -> str:
    """"ipc", "net", "uts", or "" when the kernel does not namespace the key."""
    if key in _IPC_EXACT or key.startswith(_IPC_PREFIXES):
        return "ipc"
    if key.startswith("net."):
        return "net"
    if key in _UTS_EXACT:
        return "uts"
    return ""


def container_sysctls(requested: Mapping[str, str], sandbox: SandboxRecord) -> dict[str, str]:
    own = {"ipc": bool(sandbox.ipc_path), "net": bool(sandbox.netns_path), "uts": bool(sandbox.uts_path)}
    out: dict[str, str] = {}
    for raw_key, value in sorted(requested.items()):
        # "net/ipv4/conf/eth0.100/forwarding" is the slash spelling: "." and "/" swap roles.
        key = raw_key.translate(_SLASH_TO_DOT) if "/" in raw_key else raw_key
        namespace = sysctl_namespace(key)
        if not namespace:
            raise InvalidArgument(f"sysctl {raw_key!r} is not namespaced and cannot be set for a pod")
        if not own[namespace]:
            raise InvalidArgument(f"sysctl {raw_key!r} needs the pod's own {namespace} namespace; it has the host's")
        out[key] = value
    return out
