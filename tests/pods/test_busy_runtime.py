"""A runtime busy with slow calls stays ready, and a call the kubelet gives up on stops in the daemon too."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.pods import Pods
from tests.support.runtime import wait_for


def test_64_slow_exec_syncs_do_not_make_the_runtime_unready(pod: Pods):
    _sid, cid = pod.run_container(["sleep", "3600"])
    rt = pod.client.runtime
    with ThreadPoolExecutor(64) as pool:
        slow = [pool.submit(pod.exec, cid, ["sleep", "4"], 30) for _ in range(64)]
        # Every monitord worker now runs an ExecSync; health has its own lane.
        started = time.monotonic()
        while not all(f.done() for f in slow) and time.monotonic() - started < 60:
            conditions = {c.type: c for c in rt.Status(api_pb2.StatusRequest(), timeout=5).status.conditions}
            assert conditions["RuntimeReady"].status, conditions["RuntimeReady"]
            rt.ListContainers(api_pb2.ListContainersRequest(), timeout=5)
            time.sleep(0.1)
        assert all(f.result().exit_code == 0 for f in slow)


def test_a_cancelled_exec_sync_stops_its_command_in_the_container(pod: Pods):
    """The kubelet cancels (its deadline is far off): the cancel crosses the nng hop to monitord."""
    _sid, cid = pod.run_container(["sleep", "3600"])
    call = pod.client.runtime.ExecSync.future(
        api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "123"], timeout=0), timeout=120)
    wait_for(lambda: b"sleep 123" in pod.exec(cid, ["ps", "-o", "args"]).stdout, 10, "the command to start")
    call.cancel()
    wait_for(lambda: b"sleep 123" not in pod.exec(cid, ["ps", "-o", "args"]).stdout, 10,
             "the cancelled command to be killed")
    assert call.cancelled()


def test_an_exec_sync_past_its_grpc_deadline_stops_its_command(pod: Pods):
    _sid, cid = pod.run_container(["sleep", "3600"])
    with pytest.raises(grpc.RpcError) as err:
        pod.client.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "124"], timeout=0),
                                    timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: b"sleep 124" not in pod.exec(cid, ["ps", "-o", "args"]).stdout, 10,
             "the abandoned command to be killed")


def test_exec_syncs_cancelled_as_their_commands_start_leave_no_command(pod: Pods):
    """Deadlines from 20 to 130 ms race runc's start of the command: whenever the call ends,
    the command it started must not live on in the container. (On a loaded machine monitord's
    deadline and the gateway's cancellation used to cancel the handler twice, the second time in
    the middle of killing the command.)"""
    _sid, cid = pod.run_container(["sleep", "3600"])
    for i in range(12):
        with pytest.raises(grpc.RpcError):
            pod.client.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", f"97{i:02d}"],
                                                                timeout=0), timeout=0.02 + 0.01 * i)
    wait_for(lambda: b"sleep 97" not in pod.exec(cid, ["ps", "-o", "args"]).stdout, 15,
             "every command of a cancelled ExecSync to be gone")
