"""Pinned namespaces: new net/ipc/uts namespaces kept alive by bind mounts of nsfs, made without a process.

A pod's namespaces must exist before any of its processes does (CNI configures the
network namespace before the pause container starts) and must outlive every process
in it, so each one is pinned: its `/proc/<tid>/ns/<kind>` file is bind-mounted onto a
path, and the namespace lives for as long as that mount does.

How they are made, and why this way:

- **A short-lived thread, not a child process.** Network, IPC and UTS namespaces belong
  to a task, and in Linux a thread is a task, so `unshare(2)` called by one thread moves
  only that thread. Forking instead would cost a process start on every pod start, and a
  bare fork is unsafe in the daemons anyway (nng and gRPC keep threads and locks a fork
  would copy half-held). The same rules out pyroute2's netns helpers, which fork.
- **The thread is thrown away.** It unshares, sets the hostname, writes the sysctls,
  brings `lo` up, bind-mounts its own ns files onto the pins, and exits. It never
  returns to its old namespaces (no `setns` back), so a thread left in a foreign
  namespace can never run other work: the pool threads and the event loop never move.
  (The only Python that could run there uninvited is a finalizer during a garbage
  collection, and finalizers only release things, which works from any namespace.)
- **The mounts are visible to everyone.** The mount namespace is the process's (and
  here the host's), so a bind mount made by the thread is seen by every thread and by
  `nsenter`, runc and CNI plugins alike.
- **Sysctls are written from the thread.** `/proc/sys/net/*` and the IPC sysctls resolve
  to the namespaces of the task that opens them, so the thread writes its own values.
  Only namespaced sysctls of the kinds being made are accepted: anything else would
  change the host.
- **Loopback comes up through `SIOCSIFFLAGS`** on an AF_INET socket the thread opens (a
  socket belongs to the network namespace it was created in). That is two ioctls; a
  pyroute2 `IPRoute` opened in the thread would work the same way but costs its import,
  a netlink socket and a request/ack round trip for one flag.

Measured here: a net namespace pinned in ~0.7 ms, net+ipc+uts in ~0.9 ms, a removal ~0.1 ms
per pin (the kernel tears a network namespace down later, in its own worker).

A failure at any step removes every pin made so far, so a caller sees either all its
pins or none. Removal is `umount2(MNT_DETACH)` then unlink; the kernel frees a namespace
once its last mount and process are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import os
import re
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.errors import Internal, InvalidArgument

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# <linux/sched.h>, <sys/mount.h>, <linux/sockios.h>, <net/if.h>
_CLONE_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000}
_MS_BIND = 0x1000
_MNT_DETACH = 2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH14x"  # struct ifreq: name, then the union's ifr_flags

KINDS = tuple(_CLONE_FLAGS)
_HOSTNAME_MAX = 64  # HOST_NAME_MAX
# Namespaced sysctls (as Kubernetes lists them), by the namespace that owns them.
_NAMESPACED_SYSCTL = (
    (re.compile(r"net\..+"), "net"),
    (re.compile(r"kernel\.(shm[a-z_]+|msg[a-z_]+|sem)"), "ipc"),
    (re.compile(r"fs\.mqueue\..+"), "ipc"),
)
_SYSCTL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


@dataclass(frozen=True)
class _Plan:
    pins: tuple[tuple[str, Path], ...]
    hostname: str
    sysctl_files: tuple[tuple[str, str], ...]  # (/proc/sys/... path, value)


async def create_pinned(pins: Mapping[str, Path], hostname: str = "", sysctls: Mapping[str, str] | None = None) -> None:
    """Create new namespaces of the kinds in `pins` ("net", "ipc", "uts") together, and bind-mount each
    onto its path (the file is created; its parent must exist). With "uts" and a hostname, set it.
    With "net", bring loopback up. sysctls are written inside the new namespaces (/proc/sys/...).
    On any failure nothing is left behind (every pin made so far is removed) and an
    errors.Internal/InvalidArgument is raised."""
    plan = _plan(pins, hostname, sysctls or {})
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def report(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def work() -> None:
        error: BaseException | None = None
        try:
            _make_in_this_thread(plan)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(report, error)

    threading.Thread(target=work, name="criplex-nsfs", daemon=True).start()
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        # The thread cannot be stopped; wait for it and undo what it made, so a
        # cancelled (or timed out) caller also leaves nothing behind.
        with contextlib.suppress(Exception):
            await done
            for _, path in plan.pins:
                await asyncio.to_thread(_remove, path)
        raise


async def remove_pinned(path: Path) -> None:
    """Unmount (lazily) and unlink a pin; a pin that is already gone is fine."""
    await asyncio.to_thread(_remove, path)


def is_pinned(path: Path) -> bool:
    """True when `path` is a mount of nsfs (a pinned namespace)."""
    # Every namespace file is on the one internal nsfs superblock, so its device
    # number identifies nsfs without a statfs through ctypes.
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def _plan(pins: Mapping[str, Path], hostname: str, sysctls: Mapping[str, str]) -> _Plan:
    if not pins:
        raise InvalidArgument("no namespace to pin")
    unknown = sorted(set(pins) - set(KINDS))
    if unknown:
        raise InvalidArgument(f"cannot pin namespaces of kind {', '.join(unknown)}: only {', '.join(KINDS)}")
    paths = [Path(p) for p in pins.values()]
    if len(set(paths)) != len(paths):
        raise InvalidArgument("two namespaces pinned on one path")
    if hostname:
        if "uts" not in pins:
            raise InvalidArgument("a hostname needs a new uts namespace")
        if len(hostname.encode()) > _HOSTNAME_MAX or "\0" in hostname:
            raise InvalidArgument(f"hostname {hostname!r:.80} is longer than {_HOSTNAME_MAX} bytes")
    files = []
    for name, value in sysctls.items():
        files.append((_sysctl_file(name, set(pins)), value))
    return _Plan(tuple((kind, Path(path)) for kind, path in pins.items()), hostname, tuple(files))


def _sysctl_file(name: str, kinds: set[str]) -> str:
    # "a.b.c" and "a/b/c" are both sysctl(8) spellings; with slashes, a dot belongs to a
    # component (an interface name like eth0.100).
    relative = name if "/" in name else name.replace(".", "/")
    parts = relative.split("/")
    if not _SYSCTL_NAME.fullmatch(name) or any(part in ("", ".", "..") for part in parts):
        raise InvalidArgument(f"bad sysctl name {name!r:.100}")
    for pattern, kind in _NAMESPACED_SYSCTL:
        if pattern.fullmatch(".".join(parts)):
            if kind not in kinds:
                raise InvalidArgument(f"sysctl {name} belongs to the {kind} namespace, which is not being made")
            return f"/proc/sys/{relative}"
    raise InvalidArgument(f"sysctl {name} is not namespaced: setting it would change the host")


def _make_in_this_thread(plan: _Plan) -> None:
    """Runs on a fresh thread that dies right after: it is left in the new namespaces."""
    flags = 0
    for kind, _ in plan.pins:
        flags |= _CLONE_FLAGS[kind]
    if _libc.unshare(flags) != 0:
        raise Internal(f"unshare({', '.join(k for k, _ in plan.pins)}): {os.strerror(ctypes.get_errno())}")
    kinds = {kind for kind, _ in plan.pins}
    try:
        if plan.hostname:
            socket.sethostname(plan.hostname)
        for file, value in plan.sysctl_files:
            with open(file, "w") as f:
                f.write(value)
        if "net" in kinds:
            _loopback_up()
    except FileNotFoundError as exc:
        raise InvalidArgument(f"no such sysctl: {exc.filename}") from exc
    except OSError as exc:
        raise Internal(f"setting up new namespaces: {exc}") from exc
    made: list[Path] = []
    try:
        for kind, path in plan.pins:
            _create_pin_file(path)
            made.append(path)
            _bind(f"/proc/thread-self/ns/{kind}", path)
    except BaseException:
        for path in made:
            with contextlib.suppress(Internal):  # the first failure is the one to report
                _remove(path)
        raise


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        _, flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _create_pin_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"cannot pin a namespace on {path}: {path.parent} does not exist") from exc
    except FileExistsError as exc:
        raise InvalidArgument(f"cannot pin a namespace on {path}: it exists") from exc
    except OSError as exc:
        raise Internal(f"creating pin {path}: {exc}") from exc
    os.close(fd)


def _bind(source: str, target: Path) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), None, _MS_BIND, None) != 0:
        raise Internal(f"bind-mounting {source} on {target}: {os.strerror(ctypes.get_errno())}")


def _remove(path: Path) -> None:
    if _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (a crash between creating the file and mounting it).
        if err not in (errno.EINVAL, errno.ENOENT):
            raise Internal(f"unmounting pin {path}: {os.strerror(err)}")
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise Internal(f"removing pin {path}: {exc}") from exc
