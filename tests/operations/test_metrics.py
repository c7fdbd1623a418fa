"""The gateway's /metrics: CRI-O's metric names, figures that move, and daemons that are down."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.operations.admin_support import http
from tests.support.images import build_busybox_image
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import wait_for

P = "container_runtime_criplex_"


def scrape(pods: Pods) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(pods.metrics_url, timeout=10).text  # type: ignore[attr-defined]
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((P + name, tuple(sorted(labels.items()))), 0.0)


def test_cri_o_metric_names_move_after_a_pull_and_a_pod_start(observed: Pods, registry: Registry) -> None:
    before = scrape(observed)
    reference = f"criplex-test/metrics-fresh:{uuid.uuid4().hex[:8]}"
    push(registry, reference, build_busybox_image(cmd=("sleep", "3600"), marker=uuid.uuid4().hex))
    observed.pull(f"{registry.host}/{reference}")
    sandbox = sandbox_config()
    sid = observed.run_pod(sandbox)
    observed.start(observed.create(sid, container_config(observed.image, ["sleep", "3600"]), sandbox))
    after = scrape(observed)

    assert value(after, "image_pulls_success_total") == value(before, "image_pulls_success_total") + 1
    assert value(after, "image_pulls_bytes_total") > value(before, "image_pulls_bytes_total")
    # busybox's base layer is shared with the image pulled at start: reused, not downloaded.
    assert value(after, "image_layer_reuse_total") > value(before, "image_layer_reuse_total")
    for operation in ("RunPodSandbox", "CreateContainer", "StartContainer", "PullImage"):
        assert value(after, "operations_total", operation=operation) >= \
            value(before, "operations_total", operation=operation) + 1, operation
        assert value(after, "operations_latency_seconds_count", operation=operation) >= 1
    assert value(after, "operations_latency_seconds_bucket", operation="RunPodSandbox", le="+Inf") >= 1
    hops = [k for k in after if k[0] == P + "nng_hop_seconds_count" and ("daemon", "monitord") in k[1]]
    assert hops, "no nng hop latency recorded for monitord"
    for daemon in ("imaged", "storaged", "netd", "monitord"):
        assert value(after, "daemon_up", daemon=daemon) == 1.0
        assert (P + "daemon_restarts_total", (("daemon", daemon),)) in after
        assert (P + "daemon_inflight_requests", (("daemon", daemon),)) in after
    assert (P + "containers_oom_total", ()) in after
    assert (P + "processes_defunct", ()) in after
    assert value(after, "view_resyncs_total") >= 1


def test_a_failed_call_counts_as_an_error_of_its_method(observed: Pods) -> None:
    before = value(scrape(observed), "operations_errors_total", operation="ContainerStatus", error="NOT_FOUND")
    with pytest.raises(grpc.RpcError):
        observed.status("0" * 64)
    after = value(scrape(observed), "operations_errors_total", operation="ContainerStatus", error="NOT_FOUND")
    assert after == before + 1


def test_a_stopped_daemon_shows_up_0_and_the_scrape_still_answers(observed: Pods) -> None:
    observed.run.supervisorctl("stop", "netd")
    try:
        wait_for(lambda: value(scrape(observed), "daemon_up", daemon="netd") == 0.0, 15, "daemon_up{netd} 0")
        samples = scrape(observed)
        assert value(samples, "daemon_up", daemon="monitord") == 1.0
        assert value(samples, "image_pulls_success_total") >= 1  # imaged's figures still come
    finally:
        observed.run.supervisorctl("start", "netd")
        wait_for(observed.run.ready, 30, "criplex to be ready again")
    wait_for(lambda: value(scrape(observed), "daemon_up", daemon="netd") == 1.0, 15, "daemon_up{netd} 1")


def _ready(pods: Pods, daemon: str) -> bool:
    return bool(json.loads(http(pods.run, "GET", "/info").body)["daemons"][daemon]["ready"])


def _restarts(pods: Pods, daemon: str) -> tuple[float, int]:
    """daemon_restarts_total from /metrics and `restarts` from the status API's /info."""
    info = json.loads(http(pods.run, "GET", "/info").body)
    return value(scrape(pods), "daemon_restarts_total", daemon=daemon), info["daemons"][daemon]["restarts"]


@pytest.mark.parametrize("gateway_restarted_first", [False, True], ids=["gateway-up", "gateway-restarted"])
def test_daemon_restarts_count_each_restart_once(observed: Pods, gateway_restarted_first: bool) -> None:
    """Whether or not the gateway heard the daemon's first start announced, one restart counts one."""
    if gateway_restarted_first:  # the new gateway never hears netd's first start
        observed.run.supervisorctl("restart", "gateway")
        wait_for(observed.run.ready, 20, "the gateway to serve again")
    wait_for(lambda: _ready(observed, "netd"), 20, "the gateway to know netd")
    before = _restarts(observed, "netd")
    pid = observed.run.daemon_pid("netd")
    observed.run.supervisorctl("restart", "netd")
    wait_for(lambda: observed.run.daemon_pid("netd") != pid and _ready(observed, "netd"), 20, "netd to come back")
    # The start announcement repeats for a second: wait past it, then a restart must count exactly once.
    wait_for(lambda: _restarts(observed, "netd") == (before[0] + 1, before[1] + 1), 10, "the restart to count")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert _restarts(observed, "netd") == (before[0] + 1, before[1] + 1)
