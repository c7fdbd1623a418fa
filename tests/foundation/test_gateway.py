"""The whole runtime under supervisord: CRI basics, and restarting daemons one by one."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
import time

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.runtime import REPO, CriplexRun, wait_for

DAEMON_CALL = {
    # A CRI call that needs each daemon, to see it fail fast and come back.
    "imaged": lambda c: c.image.ListImages(api_pb2.ListImagesRequest(), timeout=5),
    "storaged": lambda c: c.image.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=5),
}
CONDITION_OF = {"imaged": "RuntimeReady", "storaged": "RuntimeReady", "monitord": "RuntimeReady",
                "netd": "NetworkReady"}  # streamd gates no condition: see test_streamd_down_leaves_the_runtime_ready


@pytest.fixture(scope="module")
def criplex():
    run = CriplexRun()
    try:
        yield run.start()
    finally:
        run.stop()


def test_version_names_criplex_and_v1(criplex):
    with criplex.client() as c:
        v = c.runtime.Version(api_pb2.VersionRequest(), timeout=5)
    assert (v.runtime_name, v.runtime_api_version, v.version) == ("criplex", "v1", "0.1.0")


def test_status_is_ready_with_verbose_config_and_daemon_info(criplex):
    with criplex.client() as c:
        status = c.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=5)
    conditions = {cond.type: cond.status for cond in status.status.conditions}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}
    config = json.loads(status.info["config"])
    assert config["paths"]["run_dir"] == str(criplex.run_dir)
    daemons = json.loads(status.info["daemons"])
    assert set(daemons) == {"imaged", "storaged", "netd", "monitord", "streamd"}
    assert all(d["connected"] and d["ready"] for d in daemons.values())
    # The default handler again under "", as the kubelet looks it up.
    assert [h.name for h in status.runtime_handlers] == ["", "runc"]


def test_not_yet_built_rpc_answers_unimplemented_naming_the_area_and_is_logged(criplex):
    with criplex.client() as c, pytest.raises(grpc.RpcError) as err:
        c.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest(container_id="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "checkpoint" in err.value.details()
    # It goes through the one instrumented path: a log line like every other call's.
    wait_for(lambda: "CheckpointContainer failed (UNIMPLEMENTED)" in criplex.log("gateway"), 10,
             "the gateway to log the UNIMPLEMENTED call")


def test_undecodable_request_is_invalid_argument_and_logged_at_most_once_a_second(criplex):
    with criplex.client() as c:
        raw = c.channel.unary_unary("/runtime.v1.RuntimeService/ContainerStatus",
                                    request_serializer=lambda m: m, response_deserializer=lambda b: b)
        started = time.monotonic()
        for _ in range(200):
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff\xff\xff\xff", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid ContainerStatusRequest" in err.value.details()
        elapsed = time.monotonic() - started
    wait_for(lambda: "undecodable" in criplex.log("gateway"), 10, "the log line")
    lines = [line for line in criplex.log("gateway").splitlines() if "undecodable" in line]
    assert 1 <= len(lines) <= elapsed + 2
    assert "Traceback" not in criplex.log("gateway")


def test_unknown_rpc_answers_unimplemented(criplex):
    with criplex.client() as c:
        bogus = c.channel.unary_unary("/runtime.v1.RuntimeService/NoSuchMethod",
                                      request_serializer=lambda m: b"", response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            bogus(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_sockets_are_protected(criplex):
    assert stat.S_IMODE(os.stat(criplex.socket).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(criplex.run_dir / "ipc").st_mode) == 0o700


@pytest.mark.parametrize("service", ["imaged", "storaged", "netd", "monitord"])
def test_restarting_a_daemon_never_hangs_the_gateway(criplex, service):
    """While a client loops on Status, restart one daemon under supervisord.

    Status must always answer quickly; the daemon's own call must fail only with
    UNAVAILABLE and only while it is down, and work again right after.
    """
    old_pid = criplex.daemon_pid(service)
    stop = threading.Event()
    slowest = [0.0]
    errors: list[str] = []
    not_ready_seen = threading.Event()
    call_codes: list[grpc.StatusCode] = []

    def status_loop():
        with criplex.client() as c:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = c.runtime.Status(api_pb2.StatusRequest(), timeout=2)
                    conds = {x.type: x.status for x in status.status.conditions}
                    if not conds[CONDITION_OF[service]]:
                        not_ready_seen.set()
                except grpc.RpcError as exc:
                    errors.append(f"Status: {exc.code()}")
                slowest[0] = max(slowest[0], time.monotonic() - started)
                time.sleep(0.01)

    def call_loop():
        # Its own loop: a call waiting out the connect grace must not hide the down window from Status.
        with criplex.client() as c:
            while not stop.is_set():
                try:
                    DAEMON_CALL[service](c)
                except grpc.RpcError as exc:
                    call_codes.append(exc.code())
                time.sleep(0.01)

    threads = [threading.Thread(target=status_loop)]
    if service in DAEMON_CALL:
        threads.append(threading.Thread(target=call_loop))
    for thread in threads:
        thread.start()
    try:
        # Status answers before the restart begins.
        wait_for(lambda: slowest[0] > 0, 10, "a first Status")
        out = criplex.supervisorctl("restart", service)
        assert "started" in out, out
        wait_for(lambda: criplex.daemon_pid(service) != old_pid, 10, f"{service} to get a new pid")
        wait_for(criplex.ready, 10, "the runtime to be ready again")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert slowest[0] < 1.5, f"a call took {slowest[0]:.2f}s while {service} restarted"
    assert not_ready_seen.is_set(), f"Status never showed {service} down"
    assert set(call_codes) <= {grpc.StatusCode.UNAVAILABLE}, call_codes
    if service in DAEMON_CALL:
        with criplex.client() as c:
            DAEMON_CALL[service](c)  # the next call after the restart succeeds


def test_gateway_sees_each_daemon_start_through_pub_sub(criplex):
    def starts() -> dict[str, int]:
        with criplex.client() as c:
            status = c.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=5)
        return {k: v["starts_seen"] for k, v in json.loads(status.info["daemons"]).items()}

    before = starts()
    criplex.supervisorctl("restart", "netd")
    wait_for(lambda: starts()["netd"] > before["netd"], 10, "the gateway to hear netd's start event")


def test_streamd_down_leaves_the_runtime_ready(criplex):
    """Without streamd only Exec/Attach/PortForward fail (UNAVAILABLE); Status stays ready."""
    criplex.supervisorctl("stop", "streamd")
    try:
        with criplex.client() as c:
            wait_for(lambda: not json.loads(c.runtime.Status(api_pb2.StatusRequest(verbose=True), timeout=5)
                                            .info["daemons"])["streamd"]["connected"], 10, "streamd to be seen down")
            conditions = c.runtime.Status(api_pb2.StatusRequest(), timeout=5).status.conditions
            assert all(cond.status for cond in conditions)
    finally:
        criplex.supervisorctl("start", "streamd")
    wait_for(criplex.ready, 15, "the runtime to be ready again")


def test_restarting_the_gateway_keeps_daemons_running(criplex):
    pids = {s: criplex.daemon_pid(s) for s in ("imaged", "storaged", "netd", "monitord", "streamd")}
    criplex.supervisorctl("restart", "gateway")
    wait_for(criplex.ready, 15, "the gateway to serve again")
    assert {s: criplex.daemon_pid(s) for s in pids} == pids


def test_criplex_status_and_restart_commands(criplex):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "--config", str(criplex.config_file), *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    out = cli("status")
    assert out.returncode == 0, out.stderr
    assert "RuntimeReady: true" in out.stdout and "NetworkReady: true" in out.stdout
    assert re.search(r"^imaged +(STARTING|RUNNING)", out.stdout, re.M)
    old = criplex.daemon_pid("monitord")
    assert cli("restart", "monitord").returncode == 0
    assert criplex.daemon_pid("monitord") != old
    wait_for(criplex.ready, 15, "the runtime to be ready again")
