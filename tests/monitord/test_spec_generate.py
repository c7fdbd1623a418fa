"""The whole spec from `generate`: where each concern's answer lands in config.json."""

from __future__ import annotations

import json

import pytest

from services.monitord.spec import generate
from services.monitord.spec.assemble import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS
from shared.cri import api_pb2
from shared.errors import InvalidArgument
from tests.monitord.spec_builders import (
    HOST_BOUNDING,
    busybox_rootfs,
    container_config,
    host,
    image,
    inputs,
    sandbox,
)

POD = sandbox(netns_path="/run/n", ipc_path="/run/i", uts_path="/run/u", shm_path="/run/shm",
              hosts_path="/run/hosts", resolv_path="/run/resolv", hostname_path="/run/hostname",
              cgroup_parent="/kubepods/podx")


@pytest.fixture
def rootfs(tmp_path):
    return str(busybox_rootfs(tmp_path / "rootfs", passwd="root:x:0:0::/:/bin/sh\nweb:x:33:33::/:/bin/sh\n"))


def _security(**fields):
    return api_pb2.LinuxContainerConfig(security_context=api_pb2.LinuxContainerSecurityContext(**fields))


def test_minimal_spec_is_runc_shaped_and_serialisable(rootfs):
    generated = generate(inputs(rootfs, sandbox=POD, image=image(entrypoint=("/bin/sh",), cmd=("-c", "true"),
                                                                   user="web", stop_signal="QUIT"),
                                config=container_config(linux=_security(seccomp=api_pb2.SecurityProfile(
                                    profile_type=api_pb2.SecurityProfile.RuntimeDefault)))))
    spec = json.loads(json.dumps(generated.spec))
    assert spec["ociVersion"] == "1.0.2"
    assert spec["process"]["args"] == ["/bin/sh", "-c", "true"]
    assert spec["process"]["user"] == {"uid": 33, "gid": 33, "additionalGids": []}
    assert spec["process"]["cwd"] == "/"
    assert spec["root"] == {"path": rootfs, "readonly": False}
    assert spec["hostname"] == "podhost"
    assert spec["linux"]["cgroupsPath"] == "/kubepods/podx/criplex-ctr1"
    assert spec["linux"]["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert spec["linux"]["readonlyPaths"] == list(DEFAULT_READONLY_PATHS)
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    destinations = [m["destination"] for m in spec["mounts"]]
    for expected in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
                     "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"):
        assert expected in destinations
    assert (generated.user.uid, generated.stop_signal) == (33, "SIGQUIT")


def test_cri_mount_replaces_the_pod_file_and_default_mount_it_targets(rootfs, tmp_path):
    mounts = [api_pb2.Mount(container_path="/etc/hosts", host_path=str(tmp_path / "kubelet-hosts")),
              api_pb2.Mount(container_path="/dev/shm", host_path=str(tmp_path / "shm"))]
    spec = generate(inputs(rootfs, sandbox=POD, config=container_config(command=["/bin/sh"], mounts=mounts))).spec
    by_dest = {}
    for m in spec["mounts"]:
        by_dest.setdefault(m["destination"], []).append(m["source"])
    assert by_dest["/etc/hosts"] == [str(tmp_path / "kubelet-hosts")]
    assert by_dest["/dev/shm"] == [str(tmp_path / "shm")]
    assert (tmp_path / "shm").is_dir()  # a missing hostPath source is created, as CRI-O does


def test_privileged_spec_is_unmasked_unconfined_with_host_devices(rootfs):
    spec = generate(inputs(rootfs, sandbox=POD, config=container_config(command=["/bin/sh"],
                                                                        linux=_security(privileged=True)))).spec
    linux = spec["linux"]
    assert linux["maskedPaths"] == [] and linux["readonlyPaths"] == []
    assert "seccomp" not in linux
    assert set(spec["process"]["capabilities"]["bounding"]) == HOST_BOUNDING
    assert any(d["path"] == "/dev/null" for d in linux["devices"])
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_security_context_fields_land_in_the_spec(rootfs):
    linux = _security(readonly_rootfs=True, no_new_privs=True, masked_paths=["/proc/x"], readonly_paths=["/proc/y"],
                      run_as_user=api_pb2.Int64Value(value=33))
    linux.resources.oom_score_adj = -998
    linux.resources.memory_limit_in_bytes = 1 << 30
    spec = generate(inputs(rootfs, sandbox=POD, host=host(oom_score_adj_min=-500),
                           config=container_config(command=["/bin/sh"], tty=True, linux=linux))).spec
    assert spec["root"]["readonly"] is True
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["terminal"] is True
    assert spec["process"]["oomScoreAdj"] == -500
    assert spec["process"]["user"]["uid"] == 33
    assert spec["linux"]["maskedPaths"] == ["/proc/x"] and spec["linux"]["readonlyPaths"] == ["/proc/y"]
    assert spec["linux"]["resources"]["memory"]["limit"] == 1 << 30


def test_host_namespaces_pod_gets_no_hostname_and_a_fresh_mqueue_mount(rootfs):
    spec = generate(inputs(rootfs, sandbox=sandbox())).spec
    assert "hostname" not in spec
    assert {n["type"] for n in spec["linux"]["namespaces"]} == {"mount", "pid", "cgroup"}
    mqueue = next(m for m in spec["mounts"] if m["destination"] == "/dev/mqueue")
    assert mqueue["type"] == "mqueue"  # in the host's IPC namespace it shows the host's queues


def test_sysctls_and_annotations(rootfs):
    sandbox_config = api_pb2.PodSandboxConfig(hostname="h", linux=api_pb2.LinuxPodSandboxConfig(
        sysctls={"net.ipv4.ip_unprivileged_port_start": "0"}))
    sandbox_config.metadata.name = "web"
    sandbox_config.metadata.namespace = "prod"
    config = container_config(command=["/bin/sh"], annotations={"a": "1"})
    spec = generate(inputs(rootfs, sandbox=POD, sandbox_config=sandbox_config, config=config,
                           extra_annotations={"x": "y"})).spec
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    annotations = spec["annotations"]
    assert annotations["a"] == "1" and annotations["x"] == "y"
    assert annotations["io.kubernetes.cri.sandbox-namespace"] == "prod"
    assert annotations["io.kubernetes.cri.sandbox-id"] == "pod1"


def test_unknown_user_fails_the_whole_generation(rootfs):
    with pytest.raises(InvalidArgument, match="'ghost'"):
        generate(inputs(rootfs, sandbox=POD, image=image(user="ghost")))


def test_cdi_and_hooks_are_merged_into_the_spec(rootfs, tmp_path):
    cdi_dir, hooks_dir = tmp_path / "cdi", tmp_path / "hooks"
    cdi_dir.mkdir()
    hooks_dir.mkdir()
    (cdi_dir / "v.json").write_text(json.dumps({"kind": "v.com/c", "devices": [{"name": "d", "containerEdits": {
        "env": ["FROM_CDI=1"], "deviceNodes": [{"path": "/dev/vnull", "hostPath": "/dev/null"}],
        "hooks": [{"hookName": "createRuntime", "path": "/cdi-hook"}]}}]}))
    (hooks_dir / "h.json").write_text(json.dumps({"version": "1.0.0", "hook": {"path": "/oci-hook"},
                                                  "when": {"commands": ["^/bin/sh$"]}, "stages": ["createRuntime"]}))
    config = container_config(command=["/bin/sh"], CDI_devices=[api_pb2.CDIDevice(name="v.com/c=d")])
    spec = generate(inputs(rootfs, sandbox=POD, config=config,
                           host=host(cdi_dirs=(str(cdi_dir),), hooks_dirs=(str(hooks_dir),)))).spec
    assert "FROM_CDI=1" in spec["process"]["env"]
    assert any(d["path"] == "/dev/vnull" for d in spec["linux"]["devices"])
    assert [h["path"] for h in spec["hooks"]["createRuntime"]] == ["/oci-hook", "/cdi-hook"]
