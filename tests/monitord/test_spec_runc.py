"""The generated spec runs under the real runc: user, capabilities, seccomp, pod namespaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.monitord.spec import generate, probe_host_facts
from services.monitord.spec.capabilities import DEFAULT_CAPABILITIES
from services.monitord.spec.host import capabilities_from_mask
from shared.cri import api_pb2
from tests.monitord.spec_builders import busybox_rootfs, container_config, inputs, sandbox

RUNC = shutil.which("runc") or "/usr/sbin/runc"
pytestmark = pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static is not installed")


@dataclass
class Pod:
    """Network, IPC and UTS namespaces held by bind-mounted nsfs files, as monitord makes them."""

    netns: Path
    ipc: Path
    uts: Path


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    ns_dir = tmp_path / "ns"
    ns_dir.mkdir()
    pod = Pod(ns_dir / "net", ns_dir / "ipc", ns_dir / "uts")
    for f in (pod.netns, pod.ipc, pod.uts):
        f.touch()
    try:
        subprocess.run(
            ["unshare", f"--net={pod.netns}", f"--ipc={pod.ipc}", f"--uts={pod.uts}", "true"],
            check=True,
            capture_output=True,
        )
        yield pod
    finally:
        for f in (pod.netns, pod.ipc, pod.uts):
            subprocess.run(["umount", str(f)], check=False, capture_output=True)


@dataclass
class Runc:
    root: Path
    started: list[str]
    cgroup_parent: str

    def run(self, bundle: Path, spec: dict) -> subprocess.CompletedProcess[str]:
        (bundle / "config.json").write_text(json.dumps(spec))
        container_id = "spec-" + uuid.uuid4().hex[:12]
        self.started.append(container_id)
        return subprocess.run(
            [RUNC, "--root", str(self.root), "run", "--bundle", str(bundle), container_id],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def runc(tmp_path: Path) -> Iterator[Runc]:
    runner = Runc(tmp_path / "runc-root", [], "/criplex-spec-test-" + uuid.uuid4().hex[:8])
    try:
        yield runner
    finally:
        for container_id in runner.started:
            # Removes the container's state and its cgroups, even when the run failed midway.
            subprocess.run([RUNC, "--root", str(runner.root), "delete", "--force", container_id],
                           check=False, capture_output=True)
        shutil.rmtree(runner.root, ignore_errors=True)
        # runc removes only the container's own cgroup; the parent it created is ours to remove.
        for parent in Path("/sys/fs/cgroup").glob("*" + runner.cgroup_parent):
            parent.rmdir()


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    busybox_rootfs(
        bundle / "rootfs",
        passwd="root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        group="root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
    )
    return bundle


def _run_in_pod(tmp_path: Path, runc: Runc, pod: Pod, script: str, **config: object) -> subprocess.CompletedProcess:
    bundle = _bundle(tmp_path)
    host = probe_host_facts(RUNC, hooks_dirs=(), cdi_dirs=(), default_cgroup_parent=runc.cgroup_parent)
    box = sandbox(netns_path=str(pod.netns), ipc_path=str(pod.ipc), uts_path=str(pod.uts))
    generated = generate(
        inputs(
            str(bundle / "rootfs"),
            container_id="ctr-" + uuid.uuid4().hex[:8],
            sandbox=box,
            host=host,
            config=container_config(command=["/bin/sh", "-c", script], **config),
        )
    )
    return runc.run(bundle, generated.spec)


def test_default_container_runs_as_root_with_the_default_capabilities(tmp_path, runc, pod):
    done = _run_in_pod(tmp_path, runc, pod, "id -u; grep CapEff /proc/self/status; hostname")
    assert done.returncode == 0, done.stderr
    uid, capeff, hostname = done.stdout.split("\n")[:3]
    assert uid == "0"
    assert capabilities_from_mask(int(capeff.split()[1], 16)) == frozenset(DEFAULT_CAPABILITIES)
    assert hostname == "podhost"


def test_runtime_default_seccomp_refuses_unshare(tmp_path, runc, pod):
    done = _run_in_pod(tmp_path, runc, pod, "unshare -n true && echo escaped || echo refused")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("refused")


def test_named_user_runs_with_its_groups_from_the_rootfs(tmp_path, runc, pod):
    security = api_pb2.LinuxContainerSecurityContext(run_as_username="app")
    done = _run_in_pod(tmp_path, runc, pod, "id -u; id -g; id -G; grep CapEff /proc/self/status",
                       linux=api_pb2.LinuxContainerConfig(security_context=security))
    assert done.returncode == 0, done.stderr
    uid, gid, groups, capeff = done.stdout.split("\n")[:4]
    assert (uid, gid) == ("1000", "1000")
    assert "2000" in groups.split()
    assert int(capeff.split()[1], 16) == 0  # a non-root process keeps no capability across exec


def test_privileged_container_gets_the_hosts_bounding_set_and_devices(tmp_path, runc, pod):
    done = _run_in_pod(tmp_path, runc, pod, "grep CapEff /proc/self/status; ls /dev/kmsg && echo has-kmsg",
                       linux=api_pb2.LinuxContainerConfig(
                           security_context=api_pb2.LinuxContainerSecurityContext(privileged=True)))
    assert done.returncode == 0, done.stderr
    capeff = done.stdout.split("\n")[0]
    assert capabilities_from_mask(int(capeff.split()[1], 16)) == probe_host_facts(RUNC).bounding_capabilities
    assert "has-kmsg" in done.stdout


def test_readonly_volume_and_readonly_rootfs_refuse_writes(tmp_path, runc, pod):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "f").write_text("from the host\n")
    security = api_pb2.LinuxContainerSecurityContext(readonly_rootfs=True)
    done = _run_in_pod(
        tmp_path, runc, pod,
        "cat /data/f; echo x > /data/g || echo vol-ro; echo x > /newfile || echo root-ro",
        linux=api_pb2.LinuxContainerConfig(security_context=security),
        mounts=[api_pb2.Mount(container_path="/data", host_path=str(volume), readonly=True)],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["from the host", "vol-ro", "root-ro"]
