"""Reading the host facts the spec depends on: capabilities, cgroup layout, runtime features."""

from __future__ import annotations

import json
import os
import subprocess

from services.monitord.spec.capabilities import KNOWN_CAPABILITIES
from services.monitord.spec.inputs import HostFacts

# Bit numbers of linux/capability.h, in order.
_CAPABILITY_BITS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
assert set(_CAPABILITY_BITS) == KNOWN_CAPABILITIES


def capabilities_from_mask(mask: int) -> frozenset[str]:
    return frozenset(name for bit, name in enumerate(_CAPABILITY_BITS) if mask >> bit & 1)


def bounding_capabilities() -> frozenset[str]:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return capabilities_from_mask(int(line.split()[1], 16))
    raise RuntimeError("no CapBnd in /proc/self/status")


def runtime_mount_options(runtime: str) -> frozenset[str] | None:
    """`<runtime> features` mountOptions; None when the runtime cannot say."""
    try:
        done = subprocess.run([runtime, "features"], capture_output=True, check=True, timeout=10)
        return frozenset(json.loads(done.stdout).get("mountOptions") or ())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def probe_host_facts(runtime: str = "runc", **overrides: object) -> HostFacts:
    """The host's facts; `overrides` are HostFacts fields from the configuration."""
    bounding = bounding_capabilities()
    # Lowering an oom_score_adj needs CAP_SYS_RESOURCE; without it our own value is the floor.
    with open("/proc/self/oom_score_adj", encoding="ascii") as f:
        oom_min = -1000 if "CAP_SYS_RESOURCE" in bounding else int(f.read().strip())
    cgroup_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    # v2 has no swap file at its root; it only exists in child cgroups, and whenever swap
    # accounting is compiled in, which every distribution kernel does.
    swap = cgroup_v2 or os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    facts: dict[str, object] = {
        "bounding_capabilities": bounding,
        "oom_score_adj_min": oom_min,
        "cgroup_v2": cgroup_v2,
        "swap_accounting": swap,
        "runtime_mount_options": runtime_mount_options(runtime),
    }
    facts.update(overrides)
    return HostFacts(**facts)  # type: ignore[arg-type]

