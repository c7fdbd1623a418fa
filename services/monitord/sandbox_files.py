"""What a pod's containers share from the pod: hostname, hosts, resolv.conf and a /dev/shm tmpfs."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from pathlib import Path

from shared.cri import api_pb2
from shared.errors import Internal

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
# <sys/mount.h>
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MNT_DETACH = 2

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def hosts_content(hostname: str, ips: Iterable[str] = ()) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{hostname}" for ip in ips]
    return "\n".join(lines) + "\n"


def resolv_content(dns: api_pb2.DNSConfig, host_resolv: Path = HOST_RESOLV_CONF) -> str:
    """From the pod's DNSConfig; with none given, the host's own (as the kubelet expects for DNSDefault)."""
    if not (dns.servers or dns.searches or dns.options):
        try:
            return host_resolv.read_text()
        except FileNotFoundError:
            return ""
    lines = [f"nameserver {server}" for server in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def mount_shm(target: Path, size_bytes: int) -> None:
    target.mkdir(mode=0o1777, exist_ok=True)
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    data = f"mode=1777,size={size_bytes}".encode()
    if _libc.mount(b"shm", os.fsencode(target), b"tmpfs", flags, data) != 0:
        raise Internal(f"mounting the pod's shm tmpfs on {target}: {os.strerror(ctypes.get_errno())}")


def unmount(target: Path) -> None:
    """Lazily unmount; a path that is not (or no longer) a mount point is fine."""
    if _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise Internal(f"unmounting {target}: {os.strerror(err)}")
