"""Administering one daemon: criplex stop/start SERVICE, and plain supervisorctl on the rendered config."""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest

from shared.cri import api_pb2
from tests.operations.admin_support import criplex
from tests.support.pods import Pods, sandbox_config
from tests.support.runtime import wait_for


def test_stopped_netd_makes_pod_starts_unavailable_until_it_is_started(pod: Pods) -> None:
    stopped = criplex(pod.run, "stop", "netd")
    try:
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        wait_for(lambda: not pod.run.conditions()["NetworkReady"].status, 10, "NetworkReady to turn false")
        assert pod.run.conditions()["RuntimeReady"].status
        with pytest.raises(grpc.RpcError) as refused:
            pod.client.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=sandbox_config()), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert "STOPPED" in criplex(pod.run, "status").stdout
    finally:
        started = criplex(pod.run, "start", "netd")
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(pod.run.ready, 20, "criplex to be ready again")
    sid = pod.run_pod(sandbox_config())
    ready = pod.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid), timeout=10)
    assert ready.status.state == api_pb2.SANDBOX_READY


def test_plain_supervisorctl_works_on_the_rendered_config(pods: Pods) -> None:
    rendered = pods.run.run_dir / "supervisord.conf"
    assert (os.stat(rendered).st_mode & 0o777) == 0o600
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRIPLEX_")}
    out = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(rendered), "status"],
                         env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
    for service in ("gateway", "imaged", "storaged", "netd", "monitord", "streamd"):
        assert any(line.split()[:2] == [service, "RUNNING"] for line in out.stdout.splitlines()), out.stdout
