"""The cgroups criplex's own daemons run in: a CPU weight and a memory limit per daemon.

Each daemon gets `<paths.daemon_cgroup_parent>/criplex-<service>`; conmon, which monitord
starts and which must outlive it, is moved into `<parent>/criplex-conmon` so a memory
limit on monitord never counts (or OOM-kills) a container's monitor.

These cgroups are made directly in cgroupfs, as the kubelet's cgroupfs driver makes its own,
whatever `monitord.cgroup_manager` says (that setting is about pods). On a systemd host the
parent should be a subtree systemd delegated (ARCHITECTURE.md, "Daemon cgroups").

Weights are in cgroup v2 terms (1..10000, default 100). On a v1 host they become
`cpu.shares` the way systemd converts CPUWeight: shares = weight * 1024 / 100, so the
default weight is the default share (1024) and a daemon at 100 competes like any other
cgroup. (runc's conversion, 2 + (weight - 1) * 262142 / 9999, maps 100 to 2597 shares,
which would give imaged 2.5 times an ordinary cgroup's claim.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shared import cgroup_hierarchy
from shared.cgroup_hierarchy import Hierarchy, Made
from shared.cgroup_hierarchy import current as current  # callers read a daemon's placement from here
from shared.config import SERVICES, Config, parse_size

CONMON = "conmon"
# The controllers a daemon cgroup's settings live in (on v1: the hierarchies it is made in).
DAEMON_CONTROLLERS = ("cpu", "memory")
V1_CONTROLLERS = DAEMON_CONTROLLERS
_V1_MAX_SHARES = 262144
_V1_MIN_SHARES = 2
_V2_MIN_WEIGHT, _V2_MAX_WEIGHT = 1, 10000
# What each controller's setting is called in a log line.
_SETTING_NAMES = {"cpu": "CPU weight", "memory": "memory limit"}


@dataclass(frozen=True)
class Resources:
    cpu_weight: int
    memory_max: int | None  # bytes; None = no limit


@dataclass(frozen=True)
class Setting:
    """One value written into one of a cgroup's controller files."""

    controller: str
    file: str
    value: str


@dataclass(frozen=True)
class Placement:
    """Where a daemon went, and which settings the host could not apply."""

    path: str  # "" when the daemon stays where it was started
    missing: tuple[str, ...] = ()  # controllers whose setting was not written
    why: str = ""

    def unapplied(self) -> str:
        """The settings not applied, in words for a log line: "CPU weight and memory limit"."""
        return " and ".join(_SETTING_NAMES.get(c, c) for c in self.missing)


def cpu_weight_value(weight: int) -> str:
    """cpu.weight's text: the weight itself, which the kernel accepts from 1 to 10000."""
    return str(min(max(weight, _V2_MIN_WEIGHT), _V2_MAX_WEIGHT))


def memory_max_value(limit: int | None) -> str:
    """memory.max's text: bytes, or "max" for no limit."""
    return "max" if limit is None else str(limit)


def shares_for_weight(weight: int) -> int:
    return min(max(weight * 1024 // 100, _V1_MIN_SHARES), _V1_MAX_SHARES)


def memory_limit_in_bytes_value(limit: int | None) -> str:
    """memory.limit_in_bytes's text: bytes, or -1 for no limit."""
    return "-1" if limit is None else str(limit)


def settings(wanted: Resources, unified: bool) -> tuple[Setting, ...]:
    """What to write for `wanted`, in v2 (unified) or v1 terms."""
    if unified:
        return (Setting("cpu", "cpu.weight", cpu_weight_value(wanted.cpu_weight)),
                Setting("memory", "memory.max", memory_max_value(wanted.memory_max)))
    return (Setting("cpu", "cpu.shares", str(shares_for_weight(wanted.cpu_weight))),
            Setting("memory", "memory.limit_in_bytes", memory_limit_in_bytes_value(wanted.memory_max)))


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


def configure(hierarchy: Hierarchy, path: str, wanted: Resources) -> Made:
    """Make the cgroup at `path` and write the settings its controllers can take; says what it could not."""
    made = cgroup_hierarchy.make(hierarchy, path, DAEMON_CONTROLLERS)
    for setting in settings(wanted, hierarchy.unified):
        if setting.controller in made.controllers:
            (hierarchy.directory(setting.controller, path) / setting.file).write_text(setting.value)
    return made


def move(hierarchy: Hierarchy, pid: int, path: str) -> None:
    """Put `pid` into the cgroup at `path`, in every tree of the hierarchy that holds it."""
    cgroup_hierarchy.move(hierarchy, pid, path, hierarchy.mounted(DAEMON_CONTROLLERS))


def enter(hierarchy: Hierarchy, config: Config, service: str, pid: int) -> Placement:
    """Configure `service`'s cgroup and move `pid` into it.

    Missing controllers do not stop the move: the daemon still gets a cgroup of its own (and
    conmon still leaves monitord's), only without the settings the host cannot apply.
    """
    path = cgroup_path(config, service)
    if not path:
        return Placement("")
    made = configure(hierarchy, path, resources(config, service))
    if not hierarchy.unified and not made.controllers:
        return Placement("", made.missing, made.why)  # no v1 tree to put it in
    move(hierarchy, pid, path)
    if service == "monitord":
        # Ready before monitord starts its first conmon, which then moves there (conmon.py).
        configure(hierarchy, cgroup_path(config, CONMON), resources(config, CONMON))
    return Placement(path, made.missing, made.why)


def conmon_cgroup_beside(hierarchy: Hierarchy, pid: int) -> str:
    """The conmon cgroup next to the daemon cgroup `pid` runs in, or "" when not in one of criplex's.

    Derived from monitord's own placement rather than from configuration, so a monitord the
    launcher did not place (a test, a debugging session) never moves anything.
    """
    path = cgroup_hierarchy.placed_in(hierarchy, pid, hierarchy.mounted(DAEMON_CONTROLLERS))
    if not path or os.path.basename(path) != cgroup_name("monitord"):
        return ""
    return os.path.join(os.path.dirname(path), cgroup_name(CONMON))


def in_cgroup(hierarchy: Hierarchy, pid: int, path: str) -> bool:
    """Whether `pid` is in the cgroup `path` for the controllers that carry its settings."""
    return cgroup_hierarchy.placed_in(hierarchy, pid, hierarchy.mounted(DAEMON_CONTROLLERS)) == path


def remove(hierarchy: Hierarchy, path: str) -> bool:
    """Remove the cgroup at `path` if no process is left in it; False when it is still busy."""
    return cgroup_hierarchy.remove(hierarchy, path, hierarchy.mounted(DAEMON_CONTROLLERS))


def remove_all(hierarchy: Hierarchy, config: Config) -> bool:
    """Remove every daemon cgroup (and conmon's) left empty, then the parent if empty too."""
    if not config.paths.daemon_cgroup_parent:
        return True
    done = all([remove(hierarchy, cgroup_path(config, s)) for s in (*SERVICES, CONMON)])
    if done and config.paths.daemon_cgroup_parent != "/":
        try:
            done = remove(hierarchy, config.paths.daemon_cgroup_parent)
        except OSError:
            done = False  # e.g. not empty: another cgroup an admin made under it
    return done
