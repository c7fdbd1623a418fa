"""A criplex that runs pods and containers: real runc, conmon, overlay and namespaces.

One criplex per test module; each test's pods are stopped and removed when it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fixtures import PushedImage
from tests.support.images import build_busybox_image
from tests.support.pods import Pods, kill_leftovers
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import CriplexRun, wait_for


def push_pause(registry: Registry) -> str:
    """A pause stand-in: busybox sleeping forever as the infra container's PID 1."""
    reference = "criplex-test/pause:3.9"
    push(registry, reference, build_busybox_image(cmd=("sleep", "2147483647")))
    return f"{registry.host}/{reference}"


def pods_toml(registry: Registry, etc: Path) -> str:
    (etc / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    (etc / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (etc / "hooks.d").mkdir()
    cgroup_parent = f"/criplex-test-{uuid.uuid4().hex[:8]}"
    return (f'[imaged]\nregistries_conf = "{etc}/registries.conf"\nregistries_conf_d = "{etc}/registries.conf.d"\n'
            f'policy = "{etc}/policy.json"\nauth_file = "{etc}/auth.json"\ncerts_dir = "{etc}/certs.d"\n'
            f'pause_image = "{push_pause(registry)}"\n'
            f'[monitord]\ndefault_cgroup_parent = "{cgroup_parent}"\nhooks_dirs = ["{etc}/hooks.d"]\n'
            f'[monitord.runtimes.runc]\npath = "/usr/sbin/runc"\n'
            f'[monitord.runtimes.runc-alt]\npath = "/usr/sbin/runc"\n'
            f'[gateway]\nreconcile_interval = 2.0\n')


def start_pods(registry: Registry, image: PushedImage, etc: Path, extra_toml: str = "",
               cni_conflist: str = "") -> Iterator[Pods]:
    run = CriplexRun(extra_toml=pods_toml(registry, etc) + extra_toml, cni_conflist=cni_conflist)
    with serving_pods(run, image, etc) as pods:
        yield pods


@contextlib.contextmanager
def serving_pods(run: CriplexRun, image: PushedImage, etc: Path = Path(),
                 also_remove_cgroups: tuple[str, ...] = ()) -> Iterator[Pods]:
    """Start `run` and pull `image`; at the end remove every pod, stop criplex, kill what is
    left and remove the pods' cgroups (and `also_remove_cgroups`), even if the test failed."""
    cgroup_parent = configured_cgroup_parent(run)
    pods: Pods | None = None
    try:
        run.start()
        pods = Pods(run, image.reference)
        pods.etc = etc
        pods.pull(image.reference)
        yield pods
    finally:
        if pods is not None:
            pods.cleanup()
            pods.client.close()
        run.stop()
        kill_leftovers(run)
        for parent in (cgroup_parent, *also_remove_cgroups):
            remove_cgroups(parent)


def configured_cgroup_parent(run: CriplexRun) -> str:
    return next(line.split('"')[1] for line in run.config_file.read_text().splitlines()
                if line.startswith("default_cgroup_parent"))


def remove_cgroups(parent: str) -> None:
    """The test's cgroup parent in every v1 hierarchy (children first).

    Whatever still runs in it after criplex stopped is a container a failed test left:
    killed here, so one failure cannot leak processes into the rest of the run.
    """
    procs = Path("/sys/fs/cgroup/pids") / parent.lstrip("/")
    for tasks in procs.rglob("cgroup.procs") if procs.is_dir() else ():
        for pid in tasks.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not any(t.read_text().strip() for t in procs.rglob("cgroup.procs")) if procs.is_dir()
             else True, 10, "a failed test's containers to die")
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        base = hierarchy / parent.lstrip("/")
        if not base.is_dir():
            continue
        for child in [*sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True), base]:
            if child.is_dir():
                with contextlib.suppress(OSError):  # still in use: a leak the test itself reports
                    child.rmdir()


@pytest.fixture(scope="module")
def pods(registry: Registry, pushed_busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Pods]:
    yield from start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("containers"))


@pytest.fixture
def pod(pods: Pods) -> Iterator[Pods]:
    """The module's criplex; what the test made is removed when it ends."""
    try:
        yield pods
    finally:
        pods.cleanup()
