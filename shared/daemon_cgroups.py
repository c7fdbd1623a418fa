"""The cgroups criplex's own daemons run in: a CPU weight and a memory limit per daemon.

Each daemon gets `<paths.daemon_cgroup_parent>/criplex-<service>`; conmon, which monitord
starts and which must outlive it, is moved into `<parent>/criplex-conmon` so a memory
limit on monitord never counts (or OOM-kills) a container's monitor.

Weights are in cgroup v2 terms (1..10000, default 100). On a v1 host they become
`cpu.shares` the way systemd converts CPUWeight: shares = weight * 1024 / 100, so the
default weight is the default share (1024) and a daemon at 100 competes like any other
cgroup. (runc's conversion, 2 + (weight - 1) * 262142 / 9999, maps 100 to 2597 shares,
which would give imaged 2.5 times an ordinary cgroup's claim.)
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from shared.config import SERVICES, Config, parse_size

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONMON = "conmon"
# The v1 hierarchies a daemon cgroup is made in: the ones its settings live in.
V1_CONTROLLERS = ("cpu", "memory")
_V1_MAX_SHARES = 262144
_V1_MIN_SHARES = 2


@dataclass(frozen=True)
class Resources:
    cpu_weight: int
    memory_max: int | None  # bytes; None = no limit


def unified() -> bool:
    """True on a pure cgroup v2 host; hybrid hosts keep their controllers on v1."""
    return (CGROUP_ROOT / "cgroup.controllers").is_file()


def shares_for_weight(weight: int) -> int:
    return min(max(weight * 1024 // 100, _V1_MIN_SHARES), _V1_MAX_SHARES)


def cgroup_name(service: str) -> str:
    return f"criplex-{service}"


def cgroup_path(config: Config, service: str) -> str:
    """The cgroup (relative to a hierarchy's root) of `service`, or of conmon; "" when disabled."""
    parent = config.paths.daemon_cgroup_parent
    if not parent:
        return ""
    return os.path.join(parent, cgroup_name(service))


def resources(config: Config, service: str) -> Resources:
    if service == CONMON:
        # conmon and the `runc create` it runs are part of every pod start: monitord's weight,
        # and no memory limit, since one cannot know how many containers a node will run.
        return Resources(config.monitord.cpu_weight, None)
    section = getattr(config, service)
    return Resources(section.cpu_weight, parse_size(section.memory_max) if section.memory_max else None)


def _dirs(path: str) -> list[Path]:
    if unified():
        return [CGROUP_ROOT / path.lstrip("/")]
    return [CGROUP_ROOT / controller / path.lstrip("/") for controller in V1_CONTROLLERS]


def _enable_v2_controllers(path: str) -> None:
    # v2 only delegates cpu/memory to a child whose parent lists them in cgroup.subtree_control.
    parts = Path(path.lstrip("/")).parts
    for depth in range(len(parts)):
        control = CGROUP_ROOT.joinpath(*parts[:depth]) / "cgroup.subtree_control"
        enabled = control.read_text().split()
        missing = [c for c in ("cpu", "memory") if c not in enabled]
        if missing:
            control.write_text(" ".join(f"+{c}" for c in missing))


def configure(path: str, wanted: Resources) -> None:
    """Make the cgroup at `path` (in every hierarchy that matters) and write its settings."""
    if unified():
        _enable_v2_controllers(path)
        directory = CGROUP_ROOT / path.lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.weight").write_text(str(wanted.cpu_weight))
        (directory / "memory.max").write_text("max" if wanted.memory_max is None else str(wanted.memory_max))
        return
    cpu, memory = _dirs(path)
    cpu.mkdir(parents=True, exist_ok=True)
    memory.mkdir(parents=True, exist_ok=True)
    (cpu / "cpu.shares").write_text(str(shares_for_weight(wanted.cpu_weight)))
    (memory / "memory.limit_in_bytes").write_text("-1" if wanted.memory_max is None else str(wanted.memory_max))


def move(pid: int, path: str) -> None:
    """Put `pid` (all its threads: cgroup.procs) into the cgroup at `path`, in every hierarchy."""
    for directory in _dirs(path):
        (directory / "cgroup.procs").write_text(str(pid))


def enter(config: Config, service: str, pid: int) -> str:
    """Configure `service`'s cgroup and move `pid` into it; returns the path ("" when disabled)."""
    path = cgroup_path(config, service)
    if path:
        configure(path, resources(config, service))
        move(pid, path)
        if service == "monitord":
            # Ready before monitord starts its first conmon, which then moves there (conmon.py).
            configure(cgroup_path(config, CONMON), resources(config, CONMON))
    return path


def conmon_cgroup_beside(pid: int) -> str:
    """The conmon cgroup next to the daemon cgroup `pid` runs in, or "" when not in one of criplex's.

    Derived from monitord's own placement rather than from configuration, so a monitord the
    launcher did not place (a test, a debugging session) never moves anything.
    """
    placed = current(pid)
    path = placed.get("") if unified() else placed.get("memory")
    if not path or os.path.basename(path) != cgroup_name("monitord"):
        return ""
    return os.path.join(os.path.dirname(path), cgroup_name(CONMON))


def current(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; the v2 entry is under ""."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def in_cgroup(pid: int, path: str) -> bool:
    """Whether `pid` is in the cgroup `path` for the controllers that carry its settings."""
    placed = current(pid)
    if unified():
        return placed.get("") == path
    return all(placed.get(c) == path for c in V1_CONTROLLERS)


def remove(path: str) -> bool:
    """Remove the cgroup at `path` if no process is left in it; False when it is still busy."""
    removed = True
    for directory in _dirs(path):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            removed = False
    return removed


def remove_all(config: Config) -> bool:
    """Remove every daemon cgroup (and conmon's) left empty, then the parent if empty too."""
    if not config.paths.daemon_cgroup_parent:
        return True
    done = all([remove(cgroup_path(config, s)) for s in (*SERVICES, CONMON)])
    if done and config.paths.daemon_cgroup_parent != "/":
        try:
            done = remove(config.paths.daemon_cgroup_parent)
        except OSError:
            done = False  # e.g. not empty: another cgroup an admin made under it
    return done
