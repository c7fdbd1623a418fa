"""SIGHUP / `criplex reload`: live keys apply in every daemon without a restart; the rest is named in the log."""

from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from services.podtrace.gather import PodTrace, gather_pod
from shared.config import load_config
from shared.cri import api_pb2
from tests.operations.admin_support import criplex, http
from tests.operations.conftest import free_port
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.registry import Registry
from tests.support.runtime import wait_for

RELOADING = ("gateway", "imaged", "storaged", "netd", "monitord", "streamd")


def _reload(pods: Pods) -> None:
    marks = {s: pods.run.log(s).count("configuration reloaded") for s in RELOADING}
    pids = {s: pods.run.daemon_pid(s) for s in RELOADING}
    out = criplex(pods.run, "reload")
    assert out.returncode == 0, out.stdout + out.stderr
    for service in RELOADING:
        wait_for(lambda s=service: pods.run.log(s).count("configuration reloaded") > marks[s], 10,
                 f"{service} to reload")
    assert {s: pods.run.daemon_pid(s) for s in RELOADING} == pids, "a reload must not restart anything"


def _edit_config(pods: Pods, old: str, new: str) -> None:
    text = pods.run.config_file.read_text()
    assert old in text
    pods.run.config_file.write_text(text.replace(old, new))


def test_reload_turns_on_debug_logging_in_every_daemon(pods: Pods) -> None:
    assert " DEBUG " not in pods.run.log("monitord")
    pods.run.config_file.write_text(pods.run.config_file.read_text() + '[log]\nlevel = "debug"\n')
    try:
        _reload(pods)
        for service in RELOADING:
            assert " DEBUG " in pods.run.log(service), service
        http(pods.run, "GET", "/info")
        wait_for(lambda: "status API GET /info -> 200" in pods.run.log("gateway"), 5, "the gateway's debug line")
    finally:
        _edit_config(pods, '[log]\nlevel = "debug"\n', "")
        _reload(pods)


def test_a_runtime_handler_added_by_reload_runs_pods_and_a_removed_one_refuses_them(pod: Pods) -> None:
    with pytest.raises(grpc.RpcError) as unknown:
        pod.run_pod(sandbox_config(), handler="runc-new")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _edit_config(pod, '[monitord.runtimes.runc-alt]\npath = "/usr/sbin/runc"\n',
                 '[monitord.runtimes.runc-new]\npath = "/usr/sbin/runc"\n')
    _reload(pod)
    handlers = pod.client.runtime.Status(api_pb2.StatusRequest(), timeout=5).runtime_handlers
    assert "runc-new" in [h.name for h in handlers] and "runc-alt" not in [h.name for h in handlers]
    sid = pod.run_pod(sandbox_config(), handler="runc-new")
    cid = pod.create(sid, container_config(pod.image, ["sleep", "300"]))
    pod.start(cid)
    pod.wait_state(cid, api_pb2.CONTAINER_RUNNING)
    assert (pod.run.run_dir / "runtimes" / "runc-new" / cid).is_dir()
    with pytest.raises(grpc.RpcError) as removed:
        pod.run_pod(sandbox_config(), handler="runc-alt")
    assert removed.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_change_that_needs_a_restart_is_named_in_the_log(pods: Pods) -> None:
    pods.run.config_file.write_text(pods.run.config_file.read_text() + "[transport]\nworkers = 32\n")
    try:
        _reload(pods)
        assert "transport.workers changed; restart monitord to apply" in pods.run.log("monitord")
        assert "transport.workers changed; restart gateway to apply" in pods.run.log("gateway")
    finally:
        _edit_config(pods, "[transport]\nworkers = 32\n", "")
        _reload(pods)


def test_reload_switches_imaged_to_another_registries_conf(pods: Pods, registry: Registry) -> None:
    """`imaged.registries_conf` names another file: after the reload, its prefix rewrite resolves."""
    old_path = next(line.split('"')[1] for line in pods.run.config_file.read_text().splitlines()
                    if line.startswith("registries_conf ="))
    new_path = pods.run.base / "reloaded-registries.conf"
    new_path.write_text(f'[[registry]]\nprefix = "reloaded.example/app"\nlocation = "{registry.host}/criplex-test"\n'
                        f'insecure = true\n')
    name = "reloaded.example/app/busybox:latest"
    pull = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=name))
    # No pull before the reload: without the new file the name would send imaged to resolve
    # reloaded.example, and tests reach nothing beyond loopback. imaged only ever reads the
    # file its configuration names, so the pull below can succeed through the reload alone.
    _edit_config(pods, f'registries_conf = "{old_path}"', f'registries_conf = "{new_path}"')
    try:
        _reload(pods)
        assert pods.client.image.PullImage(pull, timeout=60).image_ref.startswith("sha256:")
    finally:
        _edit_config(pods, f'registries_conf = "{new_path}"', f'registries_conf = "{old_path}"')
        _reload(pods)


def _spans_of_pod(pods: Pods, sandbox_id: str) -> PodTrace:
    return asyncio.run(gather_pod(load_config(str(pods.run.config_file)), sandbox_id))


def _start_pod(pods: Pods) -> str:
    sandbox = sandbox_config()
    sid = pods.run_pod(sandbox)
    pods.start(pods.create(sid, container_config(pods.image, ["sleep", "3600"]), sandbox))
    return sid


def _serves_metrics(port: int) -> bool:
    try:
        return "container_runtime_criplex_daemon_up" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return False


def test_reload_switches_the_span_ring_off_and_on_and_moves_the_metrics_endpoint(pod: Pods) -> None:
    """tracing.* and metrics.* apply live: no daemon restarts (`_reload` checks the PIDs)."""
    first, second = free_port(), free_port()
    assert {"gateway", "netd", "storaged", "monitord"} <= {s.service for s in _spans_of_pod(pod, _start_pod(pod)).spans}
    assert not _serves_metrics(first)
    base = pod.run.config_file.read_text()
    try:
        pod.run.config_file.write_text(base + '[tracing]\nring_size = 0\n'
                                       f'[metrics]\nenable = true\naddress = "127.0.0.1"\nport = {first}\n')
        _reload(pod)
        assert _spans_of_pod(pod, _start_pod(pod)).spans == ()
        wait_for(lambda: _serves_metrics(first), 10, f"/metrics on port {first}")

        pod.run.config_file.write_text(base + '[tracing]\nring_size = 64\n'
                                       f'[metrics]\nenable = true\naddress = "127.0.0.1"\nport = {second}\n')
        _reload(pod)
        found = _spans_of_pod(pod, _start_pod(pod))
        assert {"gateway", "netd", "storaged", "monitord"} <= {s.service for s in found.spans}
        assert all(s.end_ns > s.start_ns for s in found.spans)
        wait_for(lambda: _serves_metrics(second), 10, f"/metrics on port {second}")
        wait_for(lambda: not _serves_metrics(first), 10, f"port {first} to close")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{first}/metrics", timeout=5)
    finally:
        pod.run.config_file.write_text(base)
        _reload(pod)
    wait_for(lambda: not _serves_metrics(second), 10, "metrics to go off again")
