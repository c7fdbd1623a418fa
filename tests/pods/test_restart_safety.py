"""Restart safety, the point of the split design: no daemon's death loses a pod or a container."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from services.gateway.view import to_json
from shared.cri import api_pb2
from shared.schema.imaged import IMAGE_STATUS, ImageStatusRequest
from shared.schema.monitord import CREATE_SANDBOX, CreateSandboxRequest
from shared.schema.netd import CREATE_NETWORK, LIST_NETWORKS, CreateNetworkRequest, ListNetworksRequest
from shared.schema.storaged import CREATE_ROOTFS, LIST_ROOTFS, CreateRootfsRequest, ListRootfsRequest
from tests.support.pods import (
    Pods,
    alive,
    container_pid,
    daemon_call,
    kill_9,
    kill_leftovers,
    processes_mentioning,
    sandbox_config,
)
from tests.support.runtime import unmount_below, wait_for

SERVICES = ("gateway", "imaged", "storaged", "netd", "monitord")


@pytest.mark.parametrize("service", SERVICES)
def test_kill_9_of_a_daemon_keeps_running_containers_running(pod: Pods, service: str):
    _sid, cid = pod.run_container(["sleep", "3600"])
    pid = container_pid(pod, cid)
    kill_9(pod, service)
    assert alive(pid)
    wait_for(lambda: pod.status(cid).state == api_pb2.CONTAINER_RUNNING, 10, "status RUNNING after restart")
    assert pod.exec(cid, ["true"]).exit_code == 0
    pod.client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    assert pod.status(cid).state == api_pb2.CONTAINER_EXITED
    assert not alive(pid)


def test_an_exit_while_monitord_is_down_is_recorded_with_its_code(pod: Pods):
    _sid, cid = pod.run_container(["sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.1; done"])
    pid = container_pid(pod, cid)
    pod.run.supervisorctl("stop", "monitord")
    try:
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: not alive(pid), 10, "the container to exit")
    finally:
        pod.run.supervisorctl("start", "monitord")
    wait_for(pod.run.ready, 30, "criplex ready again")
    status = pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
    assert (status.exit_code, status.reason) == (42, "Error")


def test_restarting_every_daemon_at_once_loses_nothing(pod: Pods):
    sid, cid = pod.run_container(["sleep", "3600"])
    pid = container_pid(pod, cid)
    pod.run.supervisorctl("restart", "all")
    wait_for(pod.run.ready, 60, "criplex ready again")
    assert alive(pid)
    status = pod.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10)
    assert status.status.state == api_pb2.SANDBOX_READY
    wait_for(lambda: pod.status(cid).state == api_pb2.CONTAINER_RUNNING, 10, "status RUNNING")


def test_the_reconciler_removes_what_a_crashed_create_left(pod: Pods):
    """What a gateway killed mid-RunPodSandbox or mid-CreateContainer leaves behind."""
    run = pod.run
    image = daemon_call(run, "imaged", IMAGE_STATUS, ImageStatusRequest(pod.image)).image
    orphan = "0" * 60 + "dead"
    daemon_call(run, "storaged", CREATE_ROOTFS, CreateRootfsRequest(orphan, image.chain_ids[-1]))
    daemon_call(run, "netd", CREATE_NETWORK, CreateNetworkRequest(orphan, "p", "ns", "uid"))
    daemon_call(run, "monitord", CREATE_SANDBOX, CreateSandboxRequest(orphan, to_json(sandbox_config()), "runc"))

    def swept() -> bool:
        # Each daemon removes its part on its own, so the last one may still be at it.
        rootfs = daemon_call(run, "storaged", LIST_ROOTFS, ListRootfsRequest()).container_ids
        networks = daemon_call(run, "netd", LIST_NETWORKS, ListNetworksRequest()).networks
        return (orphan not in rootfs and orphan not in [n.sandbox_id for n in networks]
                and not (run.run_dir / "netns" / orphan).exists()
                and orphan not in Path("/proc/self/mountinfo").read_text())  # pins, /dev/shm, rootfs

    wait_for(swept, 30, "the reconciler to remove the orphans: rootfs, network, netns, pins and mounts")


def test_a_simulated_reboot_reports_pods_notready_and_containers_exited(pod: Pods):
    sid, cid = pod.run_container(["sleep", "3600"])
    pid = container_pid(pod, cid)
    run = pod.run
    run.supervisorctl("stop", "all")
    os.kill(pid, signal.SIGKILL)  # the machine goes down: every process with it
    wait_for(lambda: not alive(pid), 10, "the container to die")
    kill_leftovers(run)
    unmount_below(run.run_dir)
    for path in sorted(run.run_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.name not in ("supervisord.sock", "supervisord.pid"):
            path.unlink()
    run.supervisorctl("start", "all")
    wait_for(run.ready, 60, "criplex ready after the reboot")
    status = pod.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10)
    assert status.status.state == api_pb2.SANDBOX_NOTREADY
    container = pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
    assert container.exit_code in (137, 255)


def ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_container_whose_conmon_was_killed_still_stops_and_is_recorded_exited(pod: Pods):
    """conmon gone (OOM-killed, say): nobody writes the exit file, yet StopContainer must end."""
    _sid, cid = pod.run_container(["sleep", "3600"])
    pid = container_pid(pod, cid)
    conmons = [p for p in processes_mentioning(pod.run.base, b"conmon")
               if cid.encode() in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(conmons) == 1
    os.kill(conmons[0], signal.SIGKILL)
    wait_for(lambda: not alive(conmons[0]), 10, "conmon to die")
    assert alive(pid)  # the container outlives its monitor
    started = time.monotonic()
    pod.client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    assert time.monotonic() - started < 8  # not the 10 s wait for an exit file that nobody will write
    assert ended(pid)  # dead; reaping it is for whoever inherited it from conmon (the host's init)
    status = pod.status(cid)
    assert status.state == api_pb2.CONTAINER_EXITED
    assert status.reason == "Error" and "conmon" in status.message, status
