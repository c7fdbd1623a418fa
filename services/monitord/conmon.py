"""Starting a container under conmon, and what conmon reports back.

conmon double-forks into its own session, so it and the container outlive monitord; the
parent we start exits within milliseconds. Once `runtime create` is done, conmon writes one
JSON line to the sync pipe: `{"pid": N}`, or `{"pid": -1, "message": "..."}` when the runtime
failed. `_OCI_STARTPIPE` is left out, so conmon does not wait for us before creating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from services.monitord.oci_runtime import OciRuntime
from shared import daemon_cgroups
from shared.cgroup_hierarchy import Hierarchy
from shared.errors import FailedPrecondition, Internal

log = logging.getLogger(__name__)

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_SYNC_BYTES = 1 << 20


@dataclass(frozen=True)
class ConmonLaunch:
    container_id: str
    name: str
    bundle: Path
    persist_dir: Path
    exit_dir: Path
    socket_dir: Path
    log_path: str
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    log_size_max: int = -1
    systemd_cgroup: bool = False


def conmon_argv(conmon: str, runtime: OciRuntime, launch: ConmonLaunch) -> list[str]:
    argv = [
        conmon,
        "-b", str(launch.bundle),
        "-c", launch.container_id,
        "--exit-dir", str(launch.exit_dir),
        "-l", launch.log_path,
        "-n", launch.name,
        "-P", str(launch.bundle / "conmon-pidfile"),
        "-p", str(launch.bundle / "pidfile"),
        "--persist-dir", str(launch.persist_dir),
        "-r", runtime.path,
        "--runtime-arg", f"--root={runtime.root}",
        "--socket-dir-path", str(launch.socket_dir),
        "-u", launch.container_id,
        "--log-level", "info",
        "--syslog",
    ]
    if launch.systemd_cgroup:
        argv.append("-s")
    if launch.tty:
        argv.append("-t")
    elif launch.stdin:
        argv.append("-i")
        if not launch.stdin_once:
            argv.append("--leave-stdin-open")
    if launch.log_size_max >= 0:
        argv += ["--log-size-max", str(launch.log_size_max)]
    return argv


async def create_under_conmon(conmon: str, runtime: OciRuntime, launch: ConmonLaunch, timeout: float) -> int:
    """Have conmon run `runtime create`; return the container's init pid."""
    with runtime.span(f"conmon start ({os.path.basename(runtime.path)} create)"):
        return await _create_under_conmon(conmon, runtime, launch, timeout)


async def _create_under_conmon(conmon: str, runtime: OciRuntime, launch: ConmonLaunch, timeout: float) -> int:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.setblocking(False)
        env = {"PATH": os.environ.get("PATH", _DEFAULT_PATH), "_OCI_SYNCPIPE": str(theirs.fileno())}
        proc = await asyncio.create_subprocess_exec(
            *conmon_argv(conmon, runtime, launch), cwd=launch.bundle, env=env, pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        theirs.close()  # only conmon holds it now: its death means EOF here
        code = await proc.wait()
        if code != 0:
            raise Internal(f"conmon exited with status {code} before creating {launch.container_id}")
        await asyncio.to_thread(_leave_monitord_cgroup, launch)
        try:
            async with asyncio.timeout(timeout):
                report = await _read_line(ours)
        except TimeoutError:
            raise Internal(f"conmon did not report {launch.container_id} created within {timeout:g}s") from None
    finally:
        theirs.close()
        ours.close()
    return _pid_from_report(report, launch.container_id)


def _leave_monitord_cgroup(launch: ConmonLaunch) -> None:
    """Move the detached conmon out of monitord's cgroup, as CRI-O moves it into crio-conmon-<id>.

    conmon outlives monitord, so monitord's memory limit must never count it (or OOM-kill it).
    Its parent wrote the conmon pidfile before exiting, so the pid is known by now. The
    container itself is never here: runc puts it in the cgroup of its spec.
    """
    hierarchy = Hierarchy.detect()
    target = daemon_cgroups.conmon_cgroup_beside(hierarchy, os.getpid())
    if not target:
        return
    try:
        pid = int((launch.bundle / "conmon-pidfile").read_text().strip())
        daemon_cgroups.move(hierarchy, pid, target)
    except (OSError, ValueError) as exc:
        log.warning("conmon of %s stays in monitord's cgroup: %s", launch.container_id, exc)


async def _read_line(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while b"\n" not in data and len(data) < _MAX_SYNC_BYTES:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _pid_from_report(report: bytes, container_id: str) -> int:
    line = report.split(b"\n", 1)[0].strip()
    if not line:
        raise Internal(f"conmon exited without reporting on {container_id} (see syslog)")
    try:
        message = json.loads(line)
        pid = int(message["pid"])
    except (ValueError, KeyError, TypeError):
        raise Internal(f"conmon sent an unreadable report for {container_id}: {line[:200]!r}") from None
    if pid <= 0:
        raise FailedPrecondition(f"creating container {container_id}: {message.get('message') or 'runtime failed'}")
    return pid
