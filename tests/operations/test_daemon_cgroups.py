"""Each daemon in its own cgroup (CPU weight, memory limit), conmon out of monitord's, and the gateway's bounds.

The criplex here uses a cgroup parent of its own, so runs of other tests (which share the
default /criplex.daemons) never mix with what these tests read.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gateway.bounds import CallBound
from shared import daemon_cgroups
from shared.config import SERVICES, Config, load_config, parse_size
from shared.cri import api_pb2
from shared.errors import DeadlineExceeded
from tests.pods.conftest import configured_cgroup_parent, pods_toml, remove_cgroups, serving_pods
from tests.support.fixtures import PushedImage
from tests.support.images import build_busybox_image
from tests.support.layers import random_layer
from tests.support.pods import Pods, container_processes
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import CriplexRun, wait_for

V1 = Path("/sys/fs/cgroup")
HOST = daemon_cgroups.Hierarchy.detect()


def with_daemon_cgroup_parent(run: CriplexRun, parent: str) -> None:
    text = run.config_file.read_text()
    run.config_file.write_text(text.replace("[paths]\n", f'[paths]\ndaemon_cgroup_parent = "{parent}"\n', 1))


def cgroup_file(controller: str, path: str, name: str) -> str:
    return (V1 / controller / path.lstrip("/") / name).read_text().strip()


def procs(controller: str, path: str) -> set[int]:
    return {int(p) for p in cgroup_file(controller, path, "cgroup.procs").split()}


@pytest.fixture(scope="module")
def cgrouped(registry: Registry, pushed_busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[Pods, Config]]:
    daemon_parent = f"/criplex-daemons-test-{uuid.uuid4().hex[:8]}"
    run = CriplexRun(extra_toml=pods_toml(registry, tmp_path_factory.mktemp("containers"))
                     + '[storaged]\ncpu_weight = 50\nmemory_max = "768m"\n')
    with_daemon_cgroup_parent(run, daemon_parent)
    with serving_pods(run, pushed_busybox, also_remove_cgroups=(daemon_parent,)) as pods:
        yield pods, load_config(str(run.config_file))


@pytest.fixture
def cgrouped_pod(cgrouped: tuple[Pods, Config]) -> Iterator[tuple[Pods, Config]]:
    try:
        yield cgrouped
    finally:
        cgrouped[0].cleanup()


@pytest.mark.skipif(HOST.unified, reason="reads the cgroup v1 files of this host layout")
def test_each_daemon_runs_in_its_own_cgroup_with_its_shares_and_memory_limit(cgrouped: tuple[Pods, Config]):
    pods, config = cgrouped
    for service in SERVICES:
        pid = pods.run.daemon_pid(service)
        path = daemon_cgroups.cgroup_path(config, service)
        assert path == f"{config.paths.daemon_cgroup_parent}/criplex-{service}"
        placed = daemon_cgroups.current(pid)
        assert (placed["cpu"], placed["memory"]) == (path, path), service
        section = getattr(config, service)
        assert int(cgroup_file("cpu", path, "cpu.shares")) == section.cpu_weight * 1024 // 100, service
        assert int(cgroup_file("memory", path, "memory.limit_in_bytes")) == parse_size(section.memory_max), service
    # The lifecycle daemons outweigh the bulk ones, and a configured value is the one applied.
    assert int(cgroup_file("cpu", daemon_cgroups.cgroup_path(config, "monitord"), "cpu.shares")) == 10240
    assert int(cgroup_file("cpu", daemon_cgroups.cgroup_path(config, "imaged"), "cpu.shares")) == 1024
    assert int(cgroup_file("cpu", daemon_cgroups.cgroup_path(config, "storaged"), "cpu.shares")) == 512
    assert int(cgroup_file("memory", daemon_cgroups.cgroup_path(config, "storaged"),
                           "memory.limit_in_bytes")) == 768 << 20


@pytest.mark.skipif(HOST.unified, reason="reads the cgroup v1 files of this host layout")
def test_conmon_and_the_container_are_not_in_monitords_cgroup(cgrouped_pod: tuple[Pods, Config]):
    pods, config = cgrouped_pod
    _sid, cid = pods.run_container(["sleep", "600"])
    pods.wait_state(cid, api_pb2.CONTAINER_RUNNING)
    conmons = container_processes(pods.run)
    assert conmons
    monitord = daemon_cgroups.cgroup_path(config, "monitord")
    conmon_cgroup = daemon_cgroups.cgroup_path(config, daemon_cgroups.CONMON)
    for controller in daemon_cgroups.V1_CONTROLLERS:
        # Only monitord itself (and, for an instant, a runc it runs) is ever in its cgroup.
        assert not set(conmons) & procs(controller, monitord)
        assert set(conmons) <= procs(controller, conmon_cgroup)
    pod_parent = configured_cgroup_parent(pods.run)
    in_pods = {int(p) for f in (V1 / "memory" / pod_parent.lstrip("/")).rglob("cgroup.procs")
               for p in f.read_text().split()}
    assert in_pods, "the container runs in its pod's cgroup"
    assert not in_pods & procs("memory", monitord)
    # conmon's cgroup has no memory limit: a node's containers' monitors are never OOM-killed as a group.
    assert int(cgroup_file("memory", conmon_cgroup, "memory.limit_in_bytes")) > 1 << 60


@pytest.mark.skipif(HOST.unified, reason="reads the cgroup v1 files of this host layout")
def test_a_killed_monitord_returns_to_its_cgroup_and_its_containers_keep_running(
        cgrouped_pod: tuple[Pods, Config]):
    pods, config = cgrouped_pod
    _sid, cid = pods.run_container(["sleep", "600"])
    pods.wait_state(cid, api_pb2.CONTAINER_RUNNING)
    conmons = container_processes(pods.run)
    old = pods.run.daemon_pid("monitord")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _pid_or_zero(pods.run, "monitord") not in (0, old), 30, "supervisord to restart monitord")
    new = pods.run.daemon_pid("monitord")
    assert daemon_cgroups.in_cgroup(HOST, new, daemon_cgroups.cgroup_path(config, "monitord"))
    assert all(Path(f"/proc/{pid}").exists() for pid in conmons)
    wait_for(pods.run.ready, 30, "criplex to be ready again")
    assert pods.status(cid).state == api_pb2.CONTAINER_RUNNING


@pytest.mark.skipif(HOST.unified, reason="reads the cgroup v1 files of this host layout")
@pytest.mark.parametrize("service", ["imaged", "gateway"])
def test_a_restarted_daemon_lands_in_its_cgroup_again(cgrouped: tuple[Pods, Config], service: str):
    pods, config = cgrouped
    old = pods.run.daemon_pid(service)
    pods.run.supervisorctl("restart", service)
    wait_for(lambda: _pid_or_zero(pods.run, service) not in (0, old), 30, f"{service} to restart")
    new = pods.run.daemon_pid(service)
    assert daemon_cgroups.in_cgroup(HOST, new, daemon_cgroups.cgroup_path(config, service))
    assert old not in procs("memory", daemon_cgroups.cgroup_path(config, service))
    wait_for(pods.run.ready, 30, "criplex to be ready again")


def _pid_or_zero(run: CriplexRun, service: str) -> int:
    try:
        return run.daemon_pid(service)
    except ValueError:
        return 0


@pytest.mark.skipif(HOST.unified, reason="reads the cgroup v1 files of this host layout")
def test_the_daemon_cgroups_are_gone_once_criplex_stops():
    parent = f"/criplex-daemons-test-{uuid.uuid4().hex[:8]}"
    run = CriplexRun()
    with_daemon_cgroup_parent(run, parent)
    try:
        run.start()
        config = load_config(str(run.config_file))
        assert all((V1 / c / daemon_cgroups.cgroup_path(config, s).lstrip("/")).is_dir()
                   for s in SERVICES for c in daemon_cgroups.V1_CONTROLLERS)
    finally:
        run.stop()
        try:
            assert not any((V1 / c / parent.lstrip("/")).exists() for c in daemon_cgroups.V1_CONTROLLERS)
        finally:
            remove_cgroups(parent)


def test_calls_past_the_bound_wait_for_a_slot_and_all_complete():
    async def scenario() -> tuple[int, int]:
        bound = CallBound("PullImage", 2)
        peak = 0

        async def pull() -> None:
            nonlocal peak
            async with bound.slot(10.0):
                peak = max(peak, bound.in_use)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(pull() for _ in range(7)))
        return peak, bound.in_use

    assert asyncio.run(scenario()) == (2, 0)


def test_a_call_that_cannot_get_a_slot_within_its_deadline_fails_deadline_exceeded():
    async def scenario() -> None:
        bound = CallBound("ExecSync", 1)
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with bound.slot(10.0):
                held.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await held.wait()
        with pytest.raises(DeadlineExceeded, match="1 slots"):
            async with bound.slot(0.05):
                pass
        assert bound.waiting == 0
        release.set()
        await task
        async with bound.slot(0.05) as left:
            assert 0 < left <= 0.05

    asyncio.run(scenario())


@pytest.fixture
def bounded(registry: Registry, pushed_busybox: PushedImage, tmp_path: Path) -> Iterator[Pods]:
    run = CriplexRun(extra_toml=pods_toml(registry, tmp_path).replace(
        "[gateway]\n", "[gateway]\nmax_concurrent_pulls = 1\n", 1))
    with serving_pods(run, pushed_busybox) as pods:
        yield pods


def test_pulls_past_a_tiny_bound_all_succeed_while_a_pod_starts(bounded: Pods, registry: Registry, repo: str):
    references = []
    for i in range(3):
        push(registry, f"{repo}-{i}:1", build_busybox_image([random_layer(8 << 20, seed=1000 + i)]))
        references.append(f"{registry.host}/{repo}-{i}:1")
    errors: list[BaseException] = []

    def pull(reference: str) -> None:
        try:
            with bounded.run.client() as client:
                client.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=reference)),
                                       timeout=120)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(ref,)) for ref in references]
    for thread in threads:
        thread.start()
    try:
        _sid, cid = bounded.run_container(["sleep", "600"])
        bounded.wait_state(cid, api_pb2.CONTAINER_RUNNING)
    finally:
        for thread in threads:
            thread.join(timeout=180)
    assert not errors
    listed = bounded.client.image.ListImages(api_pb2.ListImagesRequest(), timeout=10).images
    tags = {tag for image in listed for tag in image.repo_tags}
    assert set(references) <= tags
