"""Security contexts as a container sees them from inside: users, capabilities, seccomp, rootfs, hooks."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.images import build_busybox_image
from tests.support.layers import TarBuilder
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.push import push
from tests.support.registry import Registry

# CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE (CRI-O's default set).
DEFAULT_CAPS = sum(1 << bit for bit in (0, 1, 3, 4, 5, 6, 7, 8, 10))


def _run(pod: Pods, config: api_pb2.ContainerConfig, sandbox: api_pb2.PodSandboxConfig | None = None) -> str:
    sandbox = sandbox or sandbox_config()
    sid = pod.run_pod(sandbox)
    cid = pod.create(sid, config, sandbox)
    pod.start(cid)
    return cid


def _sleeper(pod: Pods, image: str | None = None) -> api_pb2.ContainerConfig:
    return container_config(image or pod.image, ["sleep", "3600"])


def _cap_eff(pod: Pods, cid: str) -> int:
    status = pod.exec(cid, ["cat", "/proc/self/status"]).stdout.decode()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)


def test_default_capabilities_are_cri_os_set(pod: Pods):
    cid = _run(pod, _sleeper(pod))
    assert _cap_eff(pod, cid) == DEFAULT_CAPS


def test_added_and_dropped_capabilities(pod: Pods):
    config = _sleeper(pod)
    config.linux.security_context.capabilities.add_capabilities.append("NET_ADMIN")
    config.linux.security_context.capabilities.drop_capabilities.append("CHOWN")
    cid = _run(pod, config)
    assert _cap_eff(pod, cid) == (DEFAULT_CAPS | 1 << 12) & ~1


def test_privileged_gets_every_capability_the_host_has(pod: Pods):
    bounding = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                        if line.startswith("CapBnd:")), 16)
    sandbox = sandbox_config()
    sandbox.linux.security_context.privileged = True
    config = _sleeper(pod)
    config.linux.security_context.privileged = True
    cid = _run(pod, config, sandbox)
    assert _cap_eff(pod, cid) == bounding


@pytest.mark.parametrize(("run_as", "expected"), [
    ({"run_as_user": 1000}, "1000 1000"),
    ({"run_as_username": "app"}, "1000 1000"),
    ({"run_as_user": 4321, "run_as_group": 99}, "4321 99"),
])
def test_run_as_user_and_group(pod: Pods, run_as: dict, expected: str):
    config = _sleeper(pod)
    ctx = config.linux.security_context
    for key, value in run_as.items():
        if key == "run_as_username":
            ctx.run_as_username = value
        else:
            getattr(ctx, key).value = value
    cid = _run(pod, config)
    assert pod.exec(cid, ["sh", "-c", "echo $(id -u) $(id -g)"]).stdout.decode().strip() == expected
    status = pod.status(cid)
    assert f"{status.user.linux.uid} {status.user.linux.gid}" == expected


def test_user_names_resolve_in_the_image_even_through_an_absolute_symlink(pod: Pods, registry: Registry,
                                                                         tmp_path: Path):
    """/etc/passwd -> /srv/criplex-users: the rootfs's own file, never the host's one at that path."""
    host_file = Path("/srv/criplex-users")
    assert not host_file.exists(), "a host file at the symlink's target would make this test meaningless"
    layer = (TarBuilder().symlink("etc/passwd", "/srv/criplex-users")
             .file("srv/criplex-users", b"root:x:0:0::/root:/bin/sh\nsvc:x:7777:7777::/:/bin/sh\n").layer())
    image = build_busybox_image([layer], user="svc", cmd=("sleep", "3600"))
    reference = f"{registry.host}/criplex-test/symlinked-passwd:1"
    push(registry, reference.split("/", 1)[1], image)
    pod.pull(reference)
    try:
        host_file.parent.mkdir(exist_ok=True)
        host_file.write_text("root:x:0:0::/root:/bin/sh\nsvc:x:6666:6666::/:/bin/sh\n")
        cid = _run(pod, container_config(reference, []))
        assert pod.exec(cid, ["id", "-u"]).stdout == b"7777\n"
    finally:
        host_file.unlink(missing_ok=True)


def test_unknown_user_name_is_invalid_argument(pod: Pods):
    config = _sleeper(pod)
    config.linux.security_context.run_as_username = "no-such-user"
    sandbox = sandbox_config()
    sid = pod.run_pod(sandbox)
    with pytest.raises(grpc.RpcError) as err:
        pod.create(sid, config, sandbox)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-user" in err.value.details()


def test_readonly_rootfs_refuses_writes(pod: Pods):
    config = _sleeper(pod)
    config.linux.security_context.readonly_rootfs = True
    cid = _run(pod, config)
    assert pod.exec(cid, ["touch", "/written"]).exit_code != 0
    assert pod.exec(cid, ["touch", "/dev/shm/ok"]).exit_code == 0


def test_runtime_default_seccomp_blocks_what_unconfined_allows(pod: Pods):
    blocked = _sleeper(pod)
    blocked.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    allowed = _sleeper(pod)
    allowed.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
    probe = ["busybox", "unshare", "-U", "true"]  # a user namespace needs no capability, only seccomp's consent
    assert pod.exec(_run(pod, blocked), probe).exit_code != 0
    assert pod.exec(_run(pod, allowed), probe).exit_code == 0


def test_oci_hook_runs_for_matching_containers(pod: Pods, tmp_path: Path):
    marker = tmp_path / "hook-ran"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\ncat > {marker}\n")
    script.chmod(0o755)
    hook = {"version": "1.0.0", "hook": {"path": str(script)},
            "when": {"annotations": {"^criplex\\.test/hook$": "^yes$"}}, "stages": ["prestart"]}
    hook_file = pod.etc / "hooks.d" / f"{tmp_path.name}.json"
    hook_file.write_text(json.dumps(hook))
    try:
        config = _sleeper(pod)
        config.annotations["criplex.test/hook"] = "yes"
        cid = _run(pod, config)
        state = json.loads(marker.read_text())  # the runtime hands the hook the container's state
        assert state["id"] == cid
        marker.unlink()
        _run(pod, _sleeper(pod))
        assert not marker.exists()
    finally:
        hook_file.unlink()


def test_a_container_over_its_memory_limit_is_oom_killed(pod: Pods):
    config = container_config(pod.image, ["busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"])
    config.linux.resources.memory_limit_in_bytes = 16 * 1024 * 1024
    cid = _run(pod, config)
    status = pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
    assert status.reason == "OOMKilled"
    assert status.exit_code == 137
