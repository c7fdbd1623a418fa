"""The kubelet's sequences through the CRI socket: run a pod, create, start, stop, remove."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.pods import Pods, container_config, sandbox_config


def test_pod_and_container_lifecycle_as_the_kubelet_drives_it(pod: Pods, tmp_path: Path):
    rt = pod.client.runtime
    sandbox = sandbox_config(log_directory=str(tmp_path), labels={"app": "lifecycle"})
    sid = pod.run_pod(sandbox)
    status = rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True), timeout=10)
    assert status.status.state == api_pb2.SANDBOX_READY
    assert status.status.metadata.name == sandbox.metadata.name
    assert status.status.labels["app"] == "lifecycle"
    assert status.status.runtime_handler == "runc"
    assert "info" in status.info

    config = container_config(pod.image, ["sh", "-c", "trap 'exit 0' TERM; echo hello; echo oops >&2; "
                                                "while true; do sleep 0.1; done"],
                              log_path="c.log", labels={"tier": "web"})
    cid = pod.create(sid, config, sandbox)
    created = pod.status(cid)
    assert created.state == api_pb2.CONTAINER_CREATED
    assert created.created_at > 0 and created.started_at == 0
    assert created.log_path == str(tmp_path / "c.log")
    assert created.image_ref

    pod.start(cid)
    running = pod.status(cid)
    assert running.state == api_pb2.CONTAINER_RUNNING
    assert running.started_at >= running.created_at

    listed = rt.ListContainers(api_pb2.ListContainersRequest(), timeout=10).containers
    assert [c.id for c in listed if c.id == cid] == [cid]
    by_label = rt.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
        label_selector={"tier": "web"})), timeout=10).containers
    assert [c.id for c in by_label] == [cid]
    pods_listed = rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(
        label_selector={"app": "lifecycle"})), timeout=10).items
    assert [p.id for p in pods_listed] == [sid]

    log = tmp_path / "c.log"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "oops" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert any(line.split(" ", 3)[1:] == ["stdout", "F", "hello"] for line in lines), lines
    assert any(line.split(" ", 3)[1:] == ["stderr", "F", "oops"] for line in lines), lines

    started = time.monotonic()
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=10), timeout=30)
    stopped = pod.status(cid)
    assert stopped.state == api_pb2.CONTAINER_EXITED
    assert (stopped.exit_code, stopped.reason) == (0, "Completed")  # its trap, not SIGKILL
    assert stopped.finished_at >= stopped.started_at
    assert time.monotonic() - started < 5

    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)  # idempotent
    with pytest.raises(grpc.RpcError) as err:
        pod.status(cid)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=30)
    rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=30)  # idempotent
    status = rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10)
    assert status.status.state == api_pb2.SANDBOX_NOTREADY
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=30)
    rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=30)  # idempotent
    assert sid not in [p.id for p in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items]


@pytest.mark.parametrize(("script", "code", "reason"), [("exit 0", 0, "Completed"), ("exit 3", 3, "Error")])
def test_exit_code_and_reason_are_reported(pod: Pods, script: str, code: int, reason: str):
    _sid, cid = pod.run_container(["sh", "-c", script])
    status = pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
    assert (status.exit_code, status.reason) == (code, reason)
    assert status.finished_at > 0


def test_stop_escalates_to_sigkill_after_the_timeout(pod: Pods):
    _sid, cid = pod.run_container(["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
    started = time.monotonic()
    pod.client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2), timeout=30)
    elapsed = time.monotonic() - started
    status = pod.status(cid)
    assert status.state == api_pb2.CONTAINER_EXITED
    assert status.exit_code == 137
    assert elapsed >= 2


def test_exec_sync_returns_output_and_exit_code(pod: Pods):
    _sid, cid = pod.run_container(["sleep", "3600"])
    result = pod.exec(cid, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", 7)


def test_exec_sync_timeout_is_deadline_exceeded(pod: Pods):
    _sid, cid = pod.run_container(["sleep", "3600"])
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        pod.exec(cid, ["sleep", "60"], timeout=1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 10


def test_container_sees_its_pod_hostname_and_own_namespaces(pod: Pods):
    sandbox = sandbox_config(hostname="criplex-pod")
    sid = pod.run_pod(sandbox)
    cid = pod.create(sid, container_config(pod.image, ["sleep", "3600"]), sandbox)
    pod.start(cid)
    assert pod.exec(cid, ["hostname"]).stdout == b"criplex-pod\n"
    links = pod.exec(cid, ["cat", "/proc/net/dev"]).stdout.decode()
    assert [line.split(":")[0].strip() for line in links.splitlines()[2:]] == ["lo"]


def test_duplicate_names_are_already_exists_naming_the_existing_id(pod: Pods):
    sandbox = sandbox_config()
    sid = pod.run_pod(sandbox)
    with pytest.raises(grpc.RpcError) as err:
        pod.run_pod(sandbox)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert sid in err.value.details()
    config = container_config(pod.image, ["sleep", "3600"])
    cid = pod.create(sid, config, sandbox)
    with pytest.raises(grpc.RpcError) as err:
        pod.create(sid, config, sandbox)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert cid in err.value.details()


@pytest.mark.parametrize("call", [
    lambda rt: rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="nope"), timeout=10),
    lambda rt: rt.StartContainer(api_pb2.StartContainerRequest(container_id="nope"), timeout=10),
    lambda rt: rt.StopContainer(api_pb2.StopContainerRequest(container_id="nope"), timeout=10),
    lambda rt: rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="nope"), timeout=10),
    lambda rt: rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id="nope"), timeout=10),
    lambda rt: rt.ExecSync(api_pb2.ExecSyncRequest(container_id="nope", cmd=["true"]), timeout=10),
    lambda rt: rt.CreateContainer(api_pb2.CreateContainerRequest(
        pod_sandbox_id="nope", config=container_config("busybox", ["true"])), timeout=10),
], ids=["ContainerStatus", "StartContainer", "StopContainer", "PodSandboxStatus", "StopPodSandbox", "ExecSync",
        "CreateContainer"])
def test_unknown_ids_are_not_found(pod: Pods, call):
    with pytest.raises(grpc.RpcError) as err:
        call(pod.client.runtime)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_missing_image_is_not_found_and_leaves_nothing(pod: Pods):
    sid = pod.run_pod()
    with pytest.raises(grpc.RpcError) as err:
        pod.create(sid, container_config("127.0.0.1:9/never/pulled:1", ["true"]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert pod.client.runtime.ListContainers(api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(
        pod_sandbox_id=sid)), timeout=10).containers == []


def test_invalid_configs_are_invalid_argument(pod: Pods):
    rt = pod.client.runtime
    for config in (api_pb2.PodSandboxConfig(), sandbox_config()):
        if config.metadata.name:
            config.metadata.uid = ""
        with pytest.raises(grpc.RpcError) as err:
            rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=sandbox_config(), runtime_handler="nope"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in err.value.details()
    sid = pod.run_pod()
    with pytest.raises(grpc.RpcError) as err:
        pod.create(sid, api_pb2.ContainerConfig(image=api_pb2.ImageSpec(image=pod.image)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_second_runtime_handler_runs_pods(pod: Pods):
    sandbox = sandbox_config()
    sid = pod.run_pod(sandbox, handler="runc-alt")
    cid = pod.create(sid, container_config(pod.image, ["sleep", "3600"]), sandbox)
    pod.start(cid)
    status = pod.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10)
    assert status.status.runtime_handler == "runc-alt"
    assert pod.exec(cid, ["true"]).exit_code == 0


def test_runtime_config_and_status_report_handlers(pod: Pods):
    rt = pod.client.runtime
    assert rt.RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=10).linux.cgroup_driver == api_pb2.CGROUPFS
    handlers = rt.Status(api_pb2.StatusRequest(), timeout=10).runtime_handlers
    assert {h.name for h in handlers} == {"", "runc", "runc-alt"}
    assert not any(h.features.user_namespaces for h in handlers)
