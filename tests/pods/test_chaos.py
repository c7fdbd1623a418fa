"""Pods churn while random daemons are killed with SIGKILL: nothing is lost, nothing leaks."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import grpc

from shared.cri import api_pb2
from shared.schema.monitord import LIST_STATE, ListStateRequest
from shared.schema.netd import LIST_NETWORKS, ListNetworksRequest
from shared.schema.storaged import LIST_ROOTFS, ListRootfsRequest
from tests.pods.conftest import configured_cgroup_parent
from tests.support.pods import Pods, alive, container_config, container_processes, daemon_call, sandbox_config
from tests.support.runtime import wait_for

CHAOS_SECONDS = float(os.environ.get("CRIPLEX_CHAOS_SECONDS", "30"))
WORKERS = 3
VICTIMS = ("gateway", "imaged", "storaged", "netd", "monitord")
# What a call may answer while a daemon it needs is being killed and restarted.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}


class Churn:
    def __init__(self, pods: Pods) -> None:
        self.pods = pods
        self.stop = threading.Event()
        self.live_pods: set[str] = set()
        self.running: dict[str, str] = {}  # container -> pod, started and not yet stopped
        self.lock = threading.Lock()
        self.cycles = 0
        self.transient = 0
        self.unexpected: list[str] = []

    def call(self, fn, *args):
        try:
            return fn(*args)
        except grpc.RpcError as exc:
            if exc.code() not in TRANSIENT:
                self.unexpected.append(f"{fn.__name__}: {exc.code().name}: {exc.details()}")
            self.transient += 1
            time.sleep(0.05)  # a daemon is restarting: don't spin
            return None

    def worker(self) -> None:
        rt = self.pods.client.runtime
        while not self.stop.is_set():
            sandbox = sandbox_config()
            reply = self.call(rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=sandbox), 30)
            if reply is None:
                continue
            sid = reply.pod_sandbox_id
            with self.lock:
                self.live_pods.add(sid)
            created = self.call(rt.CreateContainer, api_pb2.CreateContainerRequest(
                pod_sandbox_id=sid, config=container_config(self.pods.image, ["sleep", "3600"]),
                sandbox_config=sandbox), 30)
            if created is not None and self.call(rt.StartContainer, api_pb2.StartContainerRequest(
                    container_id=created.container_id), 30) is not None:
                with self.lock:
                    self.running[created.container_id] = sid
            time.sleep(random.uniform(0, 0.3))
            if random.random() < 0.3:
                continue  # leave this pod running through the rest of the chaos
            # From the moment a stop is asked for, a failed answer leaves the outcome open.
            with self.lock:
                for cid in [c for c, s in self.running.items() if s == sid]:
                    self.running.pop(cid)
            if created is not None:
                self.call(rt.StopContainer, api_pb2.StopContainerRequest(container_id=created.container_id,
                                                                         timeout=0), 30)
            if self.call(rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), 30) is None:
                continue
            with self.lock:
                self.live_pods.discard(sid)  # a failed remove may still have removed it
            if self.call(rt.RemovePodSandbox, api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), 30) is not None:
                self.cycles += 1

    def killer(self, kills: list[str]) -> None:
        run = self.pods.run
        while not self.stop.wait(random.uniform(1.0, 3.0)):
            victim = random.choice(VICTIMS)
            try:
                os.kill(run.daemon_pid(victim), signal.SIGKILL)
                kills.append(victim)
            except (ValueError, ProcessLookupError):
                pass


def test_pods_churn_while_daemons_are_killed_nothing_lost_nothing_leaked(pod: Pods):
    churn = Churn(pod)
    kills: list[str] = []
    threads = [threading.Thread(target=churn.worker) for _ in range(WORKERS)]
    threads.append(threading.Thread(target=churn.killer, args=(kills,)))
    for thread in threads:
        thread.start()
    try:
        time.sleep(CHAOS_SECONDS)
    finally:
        churn.stop.set()
        for thread in threads:
            thread.join(120)
    run = pod.run
    wait_for(run.ready, 60, "criplex ready after the chaos")
    assert kills, "the chaos killed nothing"
    assert churn.cycles > 0
    assert not churn.unexpected, churn.unexpected

    # Nothing lost: every pod that exists as far as the kubelet knows is still there,
    # and every container it started and did not stop still runs.
    rt = pod.client.runtime
    listed = {p.id: p for p in rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items}
    assert churn.live_pods <= set(listed), churn.live_pods - set(listed)
    for cid in churn.running:
        wait_for(lambda cid=cid: pod.status(cid).state == api_pb2.CONTAINER_RUNNING, 20, f"{cid} running")

    # The kubelet removes everything; then nothing may be left anywhere.
    for sid in listed:
        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=60)
        rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=60)
    pod.sandboxes.clear()

    def clean() -> bool:
        state = daemon_call(run, "monitord", LIST_STATE, ListStateRequest())
        rootfs = daemon_call(run, "storaged", LIST_ROOTFS, ListRootfsRequest()).container_ids
        networks = daemon_call(run, "netd", LIST_NETWORKS, ListNetworksRequest()).networks
        return not (state.sandboxes or state.containers or rootfs or networks or container_processes(run))

    wait_for(clean, 60, "the reconciler to leave nothing behind", interval=0.5)
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(run.base) in line]
    assert mounts == []
    assert list((run.run_dir / "netns").iterdir()) == []
    assert not [pid for pid in container_processes(run) if alive(pid)]
    parent = configured_cgroup_parent(run)
    leaked = [p.name for h in Path("/sys/fs/cgroup").iterdir() for p in (h / parent.lstrip("/")).glob("*")
              if p.is_dir()]
    if leaked:
        Path("/tmp/chaos-monitord.log").write_text(run.log("monitord"))
    assert leaked == []
    print(f"chaos: {churn.cycles} full cycles, {len(kills)} kills ({', '.join(kills)}), "
          f"{churn.transient} transient errors")
