"""The daemon cgroups on a cgroup v2 (unified) hierarchy, driven against a real cgroup2 mount.

This host is v1 hybrid: cpu and memory are bound to v1, so the cgroup2 tree offers neither and
a daemon must still get its own cgroup there, with one log line saying what was not applied.
The tests mount a cgroup2 of their own (the same single v2 tree the kernel has, seen at a test
directory) and work under a test-owned parent in it. On a pure v2 host the same tests see cpu and
memory and check what is written instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared import cgroup_hierarchy, daemon_cgroups
from shared.cgroup_hierarchy import Hierarchy
from shared.config import SERVICES, Config, PathsConfig, load_config
from shared.daemon_cgroups import Resources, Setting
from shared.errors import ConfigError
from tests.support.runtime import wait_for

REPO = Path(__file__).resolve().parents[2]
Sleeper = Callable[[], int]


def cgroup2_super_options() -> str:
    """The existing cgroup2 mount's options (nsdelegate, …), which a new mount applies to the whole tree."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        _before, after = line.split(" - ", 1)
        fstype, _source, options = after.split(" ", 2)
        if fstype == "cgroup2":
            return ",".join(o for o in options.split(",") if o not in ("rw", "ro"))
    return ""


def offered(hierarchy: Hierarchy) -> set[str]:
    return set((hierarchy.root / "cgroup.controllers").read_text().split())


def subtree(directory: Path) -> set[str]:
    return set((directory / "cgroup.subtree_control").read_text().split())


@pytest.fixture
def v2(tmp_path: Path) -> Iterator[Hierarchy]:
    """A cgroup2 mount of the test's own; controllers the tests enable at its root are disabled again."""
    mountpoint = tmp_path / "cgroup2"
    mountpoint.mkdir()
    options = cgroup2_super_options()
    mounted = subprocess.run(["mount", "-t", "cgroup2", *(["-o", options] if options else []), "none",
                              str(mountpoint)], capture_output=True, text=True).returncode == 0
    if mounted:
        root = mountpoint
    elif Path("/sys/fs/cgroup/unified/cgroup.controllers").is_file():
        root = Path("/sys/fs/cgroup/unified")  # a kernel that refuses a second mount: the hybrid one
    elif Path("/sys/fs/cgroup/cgroup.controllers").is_file():
        root = Path("/sys/fs/cgroup")
    else:
        pytest.skip("no cgroup2 hierarchy can be mounted or found")
    hierarchy = Hierarchy.detect(root)
    before = subtree(root)
    try:
        yield hierarchy
    finally:
        try:
            for controller in subtree(root) - before:
                # Best effort: it stays on if a cgroup made meanwhile by someone else uses it.
                with contextlib.suppress(OSError):
                    (root / "cgroup.subtree_control").write_text(f"-{controller}")
        finally:
            if mounted:
                subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.fixture
def parent(v2: Hierarchy) -> Iterator[str]:
    """A test-owned parent cgroup path in the v2 tree, removed (children first) afterwards."""
    path = f"/criplex-v2-test-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        base = v2.root / path.lstrip("/")
        if base.is_dir():
            # Only directories are removed: a cgroup's interface files go with its rmdir.
            for directory in [*sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                      reverse=True), base]:
                directory.rmdir()


@pytest.fixture
def sleeper() -> Iterator[Sleeper]:
    """Starts `sleep` processes to place; kills each one, by PID, afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        started.append(subprocess.Popen(["sleep", "600"]))
        return started[-1].pid

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def config_with_parent(parent: str) -> Config:
    return Config(paths=PathsConfig(daemon_cgroup_parent=parent))


def procs(hierarchy: Hierarchy, path: str) -> set[int]:
    return {int(p) for p in (hierarchy.directory("", path) / "cgroup.procs").read_text().split()}


# --- what is written: pure functions (cpu.weight and memory.max cannot exist on this host) ---

@pytest.mark.parametrize(("weight", "text"), [(1, "1"), (100, "100"), (1000, "1000"), (10000, "10000"),
                                              (0, "1"), (20000, "10000")])
def test_a_cpu_weight_is_written_to_cpu_weight_as_itself_within_the_kernels_range(weight: int, text: str):
    assert daemon_cgroups.cpu_weight_value(weight) == text


@pytest.mark.parametrize(("limit", "text"), [(None, "max"), (16 << 20, "16777216"), (512 << 20, "536870912"),
                                             (1 << 30, "1073741824")])
def test_memory_max_is_bytes_or_max_for_no_limit(limit: int | None, text: str):
    assert daemon_cgroups.memory_max_value(limit) == text


def test_v2_settings_are_cpu_weight_and_memory_max_and_v1_settings_shares_and_limit_in_bytes():
    assert daemon_cgroups.settings(Resources(1000, 512 << 20), unified=True) == (
        Setting("cpu", "cpu.weight", "1000"), Setting("memory", "memory.max", "536870912"))
    assert daemon_cgroups.settings(Resources(100, None), unified=True) == (
        Setting("cpu", "cpu.weight", "100"), Setting("memory", "memory.max", "max"))
    assert daemon_cgroups.settings(Resources(1000, 512 << 20), unified=False) == (
        Setting("cpu", "cpu.shares", "10240"), Setting("memory", "memory.limit_in_bytes", "536870912"))
    assert daemon_cgroups.settings(Resources(100, None), unified=False) == (
        Setting("cpu", "cpu.shares", "1024"), Setting("memory", "memory.limit_in_bytes", "-1"))


def test_the_default_config_writes_lifecycle_weights_ten_times_the_bulk_ones_and_no_limit_for_conmon():
    config = Config()
    written = {service: dict((s.file, s.value) for s in daemon_cgroups.settings(
        daemon_cgroups.resources(config, service), unified=True)) for service in (*SERVICES, daemon_cgroups.CONMON)}
    assert written["gateway"] == {"cpu.weight": "1000", "memory.max": "536870912"}
    assert written["monitord"]["cpu.weight"] == "1000"
    assert written["imaged"] == {"cpu.weight": "100", "memory.max": "1073741824"}
    assert written["storaged"] == {"cpu.weight": "100", "memory.max": "1073741824"}
    assert written[daemon_cgroups.CONMON] == {"cpu.weight": "1000", "memory.max": "max"}


def test_a_hierarchy_names_one_directory_on_v2_and_one_per_controller_on_v1():
    v2 = Hierarchy(Path("/sys/fs/cgroup"), unified=True)
    v1 = Hierarchy(Path("/sys/fs/cgroup"), unified=False)
    assert v2.directories("/p/criplex-gateway", ("cpu", "memory")) == [Path("/sys/fs/cgroup/p/criplex-gateway")]
    assert v1.directories("/p/criplex-gateway", ("cpu", "memory")) == [
        Path("/sys/fs/cgroup/cpu/p/criplex-gateway"), Path("/sys/fs/cgroup/memory/p/criplex-gateway")]


def test_a_systemd_slice_is_refused_as_the_daemon_cgroup_parent(tmp_path: Path):
    toml = tmp_path / "criplex.toml"
    toml.write_text('[paths]\ndaemon_cgroup_parent = "/criplex.slice"\n')
    with pytest.raises(ConfigError, match=r"daemon_cgroup_parent.*not a systemd slice"):
        load_config(str(toml), etc_file=tmp_path / "none", dropin_dir=tmp_path / "none.d")
    toml.write_text('[paths]\ndaemon_cgroup_parent = "/system.slice/criplex.service"\n')
    assert load_config(str(toml), etc_file=tmp_path / "none", dropin_dir=tmp_path / "none.d"
                       ).paths.daemon_cgroup_parent == "/system.slice/criplex.service"


# --- against a real cgroup2 tree ---

def test_a_cgroup2_mount_is_detected_as_unified_and_a_plain_directory_is_not(v2: Hierarchy, tmp_path: Path):
    assert v2.unified
    assert not Hierarchy.detect(tmp_path).unified


def test_each_daemon_gets_its_own_cgroup2_cgroup_and_its_process_moves_there(
        v2: Hierarchy, parent: str, sleeper: Sleeper):
    config = config_with_parent(parent)
    unavailable = tuple(c for c in daemon_cgroups.DAEMON_CONTROLLERS if c not in offered(v2))
    for service in SERVICES:
        pid = sleeper()
        placement = daemon_cgroups.enter(v2, config, service, pid)
        path = f"{parent}/criplex-{service}"
        assert placement.path == path
        assert procs(v2, path) == {pid}
        assert daemon_cgroups.current(pid)[""] == path
        assert daemon_cgroups.in_cgroup(v2, pid, path)
        assert placement.missing == unavailable
        assert bool(placement.why) == bool(unavailable)
    # monitord's placement readies conmon's cgroup, empty until monitord moves a conmon in.
    assert procs(v2, f"{parent}/criplex-conmon") == set()


def test_without_cpu_and_memory_in_the_v2_tree_the_daemon_is_placed_and_no_setting_is_written(
        v2: Hierarchy, parent: str, sleeper: Sleeper):
    if {"cpu", "memory"} & offered(v2):
        pytest.skip("this cgroup2 tree offers cpu or memory")
    pid = sleeper()
    placement = daemon_cgroups.enter(v2, config_with_parent(parent), "imaged", pid)
    assert placement.missing == ("cpu", "memory")
    assert placement.unapplied() == "CPU weight and memory limit"
    assert "cpu, memory not available in the cgroup v2 hierarchy" in placement.why
    directory = v2.directory("", placement.path)
    assert not (directory / "cpu.weight").exists() and not (directory / "memory.max").exists()
    assert procs(v2, placement.path) == {pid}


def test_where_the_v2_tree_offers_cpu_and_memory_weight_and_limit_are_written(
        v2: Hierarchy, parent: str, sleeper: Sleeper):
    if not {"cpu", "memory"} <= offered(v2):
        pytest.skip("cpu and memory are bound to cgroup v1 on this host: cpu.weight/memory.max cannot exist")
    pid = sleeper()
    placement = daemon_cgroups.enter(v2, config_with_parent(parent), "imaged", pid)
    assert placement.missing == ()
    directory = v2.directory("", placement.path)
    assert (directory / "cpu.weight").read_text().strip() == "100"
    assert (directory / "memory.max").read_text().strip() == str(1 << 30)
    conmon = v2.directory("", f"{parent}/criplex-conmon")
    daemon_cgroups.enter(v2, config_with_parent(parent), "monitord", sleeper())
    assert (conmon / "memory.max").read_text().strip() == "max"


def test_the_launcher_places_a_daemon_in_a_v2_tree_without_cpu_and_memory_and_says_so_in_one_line(
        v2: Hierarchy, parent: str, tmp_path: Path):
    if {"cpu", "memory"} & offered(v2):
        pytest.skip("this cgroup2 tree offers cpu or memory")
    toml = tmp_path / "criplex.toml"
    toml.write_text(f'[paths]\ndaemon_cgroup_parent = "{parent}"\n')
    stderr = tmp_path / "launch.err"
    # The launcher's own code, in a process of its own, then an exec, as for a daemon.
    script = ("import os, sys\nfrom pathlib import Path\nfrom services.launch import enter_cgroup\n"
              "from shared.cgroup_hierarchy import Hierarchy\n"
              "enter_cgroup(sys.argv[1], Hierarchy(Path(sys.argv[2]), unified=True))\n"
              "os.execv('/bin/sleep', ['sleep', '600'])\n")
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", script, "gateway", str(v2.root)], cwd=REPO, stderr=err,
                                env={**os.environ, "CRIPLEX_CONFIG": str(toml)})
    try:
        wait_for(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("/sleep"), 30,
                 "the launcher to exec its daemon")
        path = f"{parent}/criplex-gateway"
        assert procs(v2, path) == {proc.pid}
        lines = stderr.read_text().splitlines()
        assert lines == [f"criplex launch: gateway runs in {path} without its CPU weight and memory limit: "
                         f"cpu, memory not available in the cgroup v2 hierarchy at {v2.root} "
                         "(bound to cgroup v1 on this host?)"]
    finally:
        proc.kill()
        proc.wait()


def test_conmon_moves_beside_a_monitord_placed_in_a_v2_tree(v2: Hierarchy, parent: str, sleeper: Sleeper):
    config = config_with_parent(parent)
    monitord = sleeper()
    daemon_cgroups.enter(v2, config, "monitord", monitord)
    target = daemon_cgroups.conmon_cgroup_beside(v2, monitord)
    assert target == f"{parent}/criplex-conmon"
    conmon = sleeper()
    daemon_cgroups.move(v2, conmon, target)
    assert procs(v2, target) == {conmon}
    # A process outside criplex's cgroups moves nothing.
    assert daemon_cgroups.conmon_cgroup_beside(v2, sleeper()) == ""


def test_busy_v2_daemon_cgroups_stay_and_empty_ones_are_all_removed(v2: Hierarchy, parent: str, sleeper: Sleeper):
    config = config_with_parent(parent)
    pids = {service: sleeper() for service in SERVICES}
    for service, pid in pids.items():
        daemon_cgroups.enter(v2, config, service, pid)
    assert not daemon_cgroups.remove_all(v2, config)
    assert (v2.root / parent.lstrip("/") / "criplex-gateway").is_dir()
    for pid in pids.values():
        daemon_cgroups.move(v2, pid, "/")
    assert daemon_cgroups.remove_all(v2, config)
    assert not (v2.root / parent.lstrip("/")).exists()


@pytest.fixture
def delegable(v2: Hierarchy) -> str:
    """A controller this cgroup2 tree offers, to exercise delegation down the path for real.

    On this host cpu and memory belong to v1, but hugetlb is free for v2: enabling it walks
    the same cgroup.subtree_control writes cpu and memory take on a pure v2 host.
    """
    for controller in ("memory", "cpu", "hugetlb", "pids", "io"):
        if controller in offered(v2):
            return controller
    pytest.skip("this cgroup2 tree offers no controller to delegate")


def test_a_controller_is_delegated_level_by_level_down_to_a_new_cgroup(
        v2: Hierarchy, parent: str, delegable: str, sleeper: Sleeper):
    made = cgroup_hierarchy.make(v2, f"{parent}/daemons/criplex-gateway", (delegable,))
    assert made.controllers == (delegable,) and made.missing == () and made.why == ""
    assert delegable in subtree(v2.root / parent.lstrip("/") / "daemons")
    leaf = v2.root / parent.lstrip("/") / "daemons" / "criplex-gateway"
    assert delegable in set((leaf / "cgroup.controllers").read_text().split())
    # A leaf with a controller still takes processes (it delegates nothing itself).
    pid = sleeper()
    cgroup_hierarchy.move(v2, pid, made.path, (delegable,))
    assert procs(v2, made.path) == {pid}


def test_a_parent_with_processes_of_its_own_cannot_delegate_and_the_reason_is_given(
        v2: Hierarchy, parent: str, delegable: str, sleeper: Sleeper):
    # As when the parent is a systemd unit's cgroup that supervisord itself runs in.
    cgroup_hierarchy.make(v2, parent, ())
    cgroup_hierarchy.move(v2, sleeper(), parent, ())
    made = cgroup_hierarchy.make(v2, f"{parent}/criplex-gateway", (delegable,))
    assert made.controllers == () and made.missing == (delegable,)
    assert f"cgroup {parent} has processes of its own" in made.why
    pid = sleeper()
    cgroup_hierarchy.move(v2, pid, made.path, ())
    assert procs(v2, made.path) == {pid}
