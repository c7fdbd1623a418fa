"""What the kubelet reads back: stats, resources, logs after rotation, the event stream, verbose info."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc

from shared.cri import api_pb2
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.runtime import wait_for


def test_container_and_pod_stats_come_from_cgroups(pod: Pods):
    sid, cid = pod.run_container(["sh", "-c", "x=$(busybox seq 1 200000); busybox dd if=/dev/zero of=/written "
                                              "bs=1M count=3 2>/dev/null; sleep 3600"])
    rt = pod.client.runtime
    wait_for(lambda: rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid), timeout=10)
             .stats.memory.working_set_bytes.value > 0, 20, "memory figures")
    stats = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid), timeout=10).stats
    assert stats.attributes.id == cid
    assert stats.cpu.usage_core_nano_seconds.value > 0
    wait_for(lambda: rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid), timeout=10)
             .stats.writable_layer.used_bytes.value >= 3 << 20, 20, "the writable layer's 3 MiB")
    assert stats.writable_layer.fs_id.mountpoint
    listed = rt.ListContainerStats(api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(
        pod_sandbox_id=sid)), timeout=10).stats
    assert [s.attributes.id for s in listed] == [cid]
    pod_stats = rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid), timeout=10).stats
    assert pod_stats.attributes.id == sid
    assert [c.attributes.id for c in pod_stats.linux.containers] == [cid]
    assert pod_stats.linux.memory.working_set_bytes.value > 0
    all_pods = rt.ListPodSandboxStats(api_pb2.ListPodSandboxStatsRequest(), timeout=10).stats
    assert sid in [p.attributes.id for p in all_pods]


def test_update_container_resources_applies_and_is_reported(pod: Pods):
    _sid, cid = pod.run_container(["sleep", "3600"])
    limit = 64 * 1024 * 1024
    pod.client.runtime.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(
        container_id=cid, linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=limit, cpu_shares=512)),
        timeout=30)
    assert pod.status(cid).resources.linux.memory_limit_in_bytes == limit
    inside = pod.exec(cid, ["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]).stdout
    assert int(inside) == limit


def test_reopen_container_log_after_the_kubelet_rotates_it(pod: Pods, tmp_path: Path):
    sandbox = sandbox_config(log_directory=str(tmp_path))
    sid = pod.run_pod(sandbox)
    cid = pod.create(sid, container_config(pod.image, ["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
                                           log_path="c.log"), sandbox)
    pod.start(cid)
    log = tmp_path / "c.log"
    wait_for(lambda: log.exists() and "tick" in log.read_text(), 10, "the first log lines")
    log.rename(tmp_path / "c.log.1")
    pod.client.runtime.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid), timeout=10)
    wait_for(lambda: log.exists() and "tick" in log.read_text(), 10, "lines in the reopened log")


def test_get_container_events_streams_the_lifecycle(pod: Pods):
    events: list[tuple[str, int]] = []
    stream = pod.client.runtime.GetContainerEvents(api_pb2.GetEventsRequest())

    def read() -> None:
        try:
            for event in stream:
                events.append((event.container_id, event.container_event_type))
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        sandbox = sandbox_config()
        sid = pod.run_pod(sandbox)
        # The stream is open on the server once it reports a container: a probe shows when.
        for attempt in range(50):
            probe = pod.create(sid, container_config(pod.image, ["true"], name=f"probe{attempt}"), sandbox)
            if _seen(events, probe):
                break
        else:
            raise AssertionError("the event stream never reported anything")
        cid = pod.create(sid, container_config(pod.image, ["sh", "-c", "exit 0"]), sandbox)
        pod.start(cid)
        pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
        pod.client.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
        expected = [api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT,
                    api_pb2.CONTAINER_STOPPED_EVENT, api_pb2.CONTAINER_DELETED_EVENT]
        wait_for(lambda: [k for c, k in events if c == cid] == expected, 10,
                 f"created/started/stopped/deleted events, got {events}")
    finally:
        stream.cancel()
        reader.join(10)


def test_verbose_status_carries_the_record(pod: Pods):
    sid, cid = pod.run_container(["sleep", "3600"])
    info = json.loads(pod.client.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info["info"])
    assert info["pid"] > 0 and info["sandbox_id"] == sid
    assert info["config"]["metadata"]["name"] == "ctr"


def test_list_and_status_calls_do_not_wait_on_a_slow_stop(pod: Pods):
    _sid, cid = pod.run_container(["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
    rt = pod.client.runtime
    stopper = threading.Thread(target=lambda: rt.StopContainer(
        api_pb2.StopContainerRequest(container_id=cid, timeout=5), timeout=30))
    stopper.start()
    try:
        slowest = 0.0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            started = time.monotonic()
            rt.ListContainers(api_pb2.ListContainersRequest(), timeout=5)
            rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid), timeout=5)
            rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=5)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.5
    finally:
        stopper.join(30)


def _seen(events: list[tuple[str, int]], container_id: str) -> bool:
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        if any(c == container_id for c, _ in events):
            return True
        time.sleep(0.01)
    return False
