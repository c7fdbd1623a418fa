"""A cgroup hierarchy as this host mounts it: one cgroup2 tree (unified) or one v1 tree per controller.

A pure v2 host (Debian 12/13 booted normally) has a single cgroup2 mount at /sys/fs/cgroup
whose root lists its controllers in `cgroup.controllers`. A v1 or hybrid host has a tmpfs
there with one mount per controller (/sys/fs/cgroup/cpu, /sys/fs/cgroup/memory, …); a hybrid
host adds a cgroup2 mount (/sys/fs/cgroup/unified) that holds no controller bound to v1.

The hierarchy is a value, detected once by whoever starts (the launcher, monitord) and passed
down, so the same code can be driven against any cgroup2 mount, e.g. a test's own.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Hierarchy:
    root: Path  # the mount point: of the cgroup2 tree, or the directory holding the v1 controller mounts
    unified: bool

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> Hierarchy:
        # Only a cgroup2 root has cgroup.controllers; a v1 layout has a tmpfs there.
        return cls(root, (root / "cgroup.controllers").is_file())

    def directory(self, controller: str, path: str) -> Path:
        """Where the cgroup `path` (relative to the hierarchy's root) keeps `controller`'s files."""
        relative = path.lstrip("/")
        return self.root / relative if self.unified else self.root / controller / relative

    def directories(self, path: str, controllers: tuple[str, ...]) -> list[Path]:
        """Every directory that is the cgroup `path` for these controllers (one on v2)."""
        if self.unified:
            return [self.directory("", path)]
        return [self.directory(c, path) for c in controllers]

    def mounted(self, controllers: tuple[str, ...]) -> tuple[str, ...]:
        """The controllers this hierarchy can give a cgroup at all (v2: those its root offers)."""
        if self.unified:
            offered = set(_words(self.root / "cgroup.controllers"))
            return tuple(c for c in controllers if c in offered)
        return tuple(c for c in controllers if (self.root / c / "cgroup.procs").is_file())


@dataclass(frozen=True)
class Made:
    """A cgroup that exists, and which of the wanted controllers it has."""

    path: str
    controllers: tuple[str, ...]
    missing: tuple[str, ...]
    why: str  # why some are missing, in words for a log line; "" when none is


def make(hierarchy: Hierarchy, path: str, controllers: tuple[str, ...]) -> Made:
    """Create the cgroup `path` with as many of `controllers` as the hierarchy can give it.

    On v2 a controller reaches a cgroup only if every ancestor lists it in
    cgroup.subtree_control, so each level enables it for the next. A controller that cannot be
    had is reported, not raised: a daemon in its own cgroup without a limit is still worth more
    than a daemon that does not start.
    """
    mounted = hierarchy.mounted(controllers)
    why = ""
    if len(mounted) < len(controllers):
        unmounted = ", ".join(c for c in controllers if c not in mounted)
        why = (f"{unmounted} not available in the cgroup v2 hierarchy at {hierarchy.root} "
               "(bound to cgroup v1 on this host?)" if hierarchy.unified
               else f"no cgroup v1 hierarchy mounted for {unmounted} under {hierarchy.root}")
    if not hierarchy.unified:
        for controller in mounted:
            hierarchy.directory(controller, path).mkdir(parents=True, exist_ok=True)
        return Made(path, mounted, tuple(c for c in controllers if c not in mounted), why)
    directory = hierarchy.root
    delegated = mounted
    for part in Path(path.lstrip("/")).parts:
        if delegated:
            try:
                _enable(directory, delegated)
            except OSError as exc:
                why = why or _why_not_delegated(hierarchy, directory, exc)
                delegated = ()
        directory = directory / part
        directory.mkdir(exist_ok=True)
    # What the kernel actually offers the new cgroup is the truth, whatever was enabled above.
    present = set(_words(directory / "cgroup.controllers"))
    have = tuple(c for c in controllers if c in present)
    missing = tuple(c for c in controllers if c not in present)
    return Made(path, have, missing, why if missing else "")


def _enable(directory: Path, controllers: tuple[str, ...]) -> None:
    control = directory / "cgroup.subtree_control"
    enabled = set(_words(control))
    wanted = [c for c in controllers if c not in enabled]
    if wanted:
        control.write_text(" ".join(f"+{c}" for c in wanted))


def _why_not_delegated(hierarchy: Hierarchy, directory: Path, exc: OSError) -> str:
    where = "/" + str(directory.relative_to(hierarchy.root)).removeprefix(".").lstrip("/")
    if exc.errno == errno.EBUSY:
        # cgroup v2's "no internal processes" rule: a cgroup with processes of its own (other
        # than the root) cannot hand domain controllers to its children.
        return f"cgroup {where} has processes of its own, so it cannot delegate controllers to its children"
    return f"controllers cannot be enabled below cgroup {where}: {exc.strerror or exc}"


def move(hierarchy: Hierarchy, pid: int, path: str, controllers: tuple[str, ...]) -> None:
    """Put `pid` (all its threads: cgroup.procs) into the cgroup `path`, in every tree that holds it."""
    for directory in hierarchy.directories(path, controllers):
        (directory / "cgroup.procs").write_text(str(pid))


def current(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path}; the v2 entry is under ""."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def placed_in(hierarchy: Hierarchy, pid: int, controllers: tuple[str, ...]) -> str:
    """The cgroup `pid` runs in for these controllers ("" when the trees disagree or hold none)."""
    placed = current(pid)
    if hierarchy.unified:
        return placed.get("", "")
    paths = {placed.get(c, "") for c in controllers}
    return paths.pop() if len(paths) == 1 else ""


def remove(hierarchy: Hierarchy, path: str, controllers: tuple[str, ...]) -> bool:
    """Remove the cgroup `path` if no process is left in it; False when it is still busy."""
    removed = True
    for directory in hierarchy.directories(path, controllers):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            removed = False
    return removed


def _words(file: Path) -> list[str]:
    return file.read_text().split()
