"""The status API (CRI-O's `crio status` routes) on <run_dir>/status.sock, spoken as curl speaks it."""

from __future__ import annotations

import json
import os
import stat

import toml

from shared.config import load_config
from shared.cri import api_pb2
from tests.operations.admin_support import criplex, http, runc_status
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.runtime import wait_for


def _running_container(pod: Pods) -> tuple[str, str]:
    sid = pod.run_pod(sandbox_config())
    cid = pod.create(sid, container_config(pod.image, ["sleep", "300"], labels={"app": "ops"}))
    pod.start(cid)
    pod.wait_state(cid, api_pb2.CONTAINER_RUNNING)
    return sid, cid


def test_status_socket_is_root_only(pods: Pods) -> None:
    mode = os.stat(pods.run.run_dir / "status.sock").st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_info_reports_storage_cgroups_id_mappings_and_every_daemon(pods: Pods) -> None:
    answer = http(pods.run, "GET", "/info")
    assert answer.status == 200
    info = json.loads(answer.body)
    config = load_config(str(pods.run.config_file))
    assert info["storage_driver"] == "overlay"
    assert info["storage_root"] == str(config.state_dir("storaged"))
    assert info["cgroup_driver"] == "cgroupfs"
    full = [{"container_id": 0, "host_id": 0, "size": 4294967295}]
    assert info["default_id_mappings"] == {"uids": full, "gids": full}
    daemons = info["daemons"]
    assert set(daemons) == {"gateway", "imaged", "storaged", "netd", "monitord", "streamd"}
    for name, daemon in daemons.items():
        assert daemon["pid"] == pods.run.daemon_pid(name), name
        assert daemon["ready"] is True, name
        assert daemon["uptime_s"] > 0, name
        assert daemon["restarts"] == 0, name


def test_config_is_the_effective_toml(pods: Pods) -> None:
    answer = http(pods.run, "GET", "/config")
    assert answer.status == 200
    assert toml.loads(answer.body) == toml.loads(load_config(str(pods.run.config_file)).to_toml())


def test_container_info_describes_the_container(pod: Pods) -> None:
    sid, cid = _running_container(pod)
    answer = http(pod.run, "GET", f"/containers/{cid}")
    assert answer.status == 200
    info = json.loads(answer.body)
    status = pod.status(cid)
    sandbox = pod.client.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
                                                  timeout=10).status
    assert info["name"].startswith("k8s_ctr_")
    assert info["pid"] > 0 and os.path.exists(f"/proc/{info['pid']}")
    assert info["image"] == pod.image
    assert info["image_ref"] == status.image_ref
    assert info["created_time"] == status.created_at
    assert info["labels"] == {"app": "ops"}
    assert info["annotations"] == {"criplex.test/container": "ctr"}
    assert info["log_path"] == status.log_path
    assert os.path.isdir(info["root"])
    assert info["sandbox"] == sid
    expected_ips = [ip for ip in [sandbox.network.ip, *(a.ip for a in sandbox.network.additional_ips)] if ip]
    assert info["ip_addresses"] == expected_ips


def test_unknown_container_is_404(pods: Pods) -> None:
    assert http(pods.run, "GET", "/containers/" + "0" * 64).status == 404
    assert http(pods.run, "POST", "/pause/" + "0" * 64).status == 404
    assert http(pods.run, "POST", "/unpause/" + "0" * 64).status == 404


def test_unknown_route_is_404_and_wrong_method_405(pods: Pods) -> None:
    assert http(pods.run, "GET", "/nothing").status == 404
    assert http(pods.run, "POST", "/info").status == 405
    assert http(pods.run, "GET", "/pause/abc").status == 405


def test_pause_freezes_a_running_container_that_the_cri_still_calls_running(pod: Pods) -> None:
    _, cid = _running_container(pod)
    assert http(pod.run, "POST", f"/pause/{cid}").status == 200
    assert runc_status(pod.run, cid) == "paused"
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert json.loads(http(pod.run, "GET", f"/containers/{cid}").body)["paused"] is True
    again = http(pod.run, "POST", f"/pause/{cid}")
    assert again.status == 409, again.body
    assert http(pod.run, "POST", f"/unpause/{cid}").status == 200
    assert runc_status(pod.run, cid) == "running"
    assert http(pod.run, "POST", f"/unpause/{cid}").status == 409


def test_pause_of_a_container_not_running_is_409(pod: Pods) -> None:
    sid = pod.run_pod(sandbox_config())
    cid = pod.create(sid, container_config(pod.image, ["true"]))
    assert http(pod.run, "POST", f"/pause/{cid}").status == 409  # created, not started
    pod.start(cid)
    pod.wait_state(cid, api_pb2.CONTAINER_EXITED)
    assert http(pod.run, "POST", f"/pause/{cid}").status == 409


def test_a_paused_container_stops(pod: Pods) -> None:
    _, cid = _running_container(pod)
    assert http(pod.run, "POST", f"/pause/{cid}").status == 200
    pod.client.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=2), timeout=60)
    assert pod.status(cid).state == api_pb2.CONTAINER_EXITED


def test_criplex_status_subcommands_are_the_api_client(pod: Pods) -> None:
    _, cid = _running_container(pod)
    info = criplex(pod.run, "status", "info")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["storage_driver"] == "overlay"
    config = criplex(pod.run, "status", "config")
    assert config.returncode == 0 and "[paths]" in config.stdout
    container = criplex(pod.run, "status", "containers", cid)
    assert container.returncode == 0 and json.loads(container.stdout)["sandbox"]
    missing = criplex(pod.run, "status", "containers", "0" * 64)
    assert missing.returncode == 1 and "404" in missing.stderr
    assert criplex(pod.run, "pause", cid).returncode == 0
    wait_for(lambda: runc_status(pod.run, cid) == "paused", 5, "the container to be paused")
    assert criplex(pod.run, "pause", cid).returncode == 1
    assert criplex(pod.run, "unpause", cid).returncode == 0
    plain = criplex(pod.run, "status")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "RUNNING" in plain.stdout and "RuntimeReady" in plain.stdout


def _container_ids(pods: Pods) -> list[str]:
    return [c.id for c in pods.client.runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=10).containers]


def _shortest_unique_prefix(cid: str, ids: list[str]) -> str:
    others = [other for other in ids if other != cid]
    return next(cid[:n] for n in range(1, len(cid) + 1) if not any(o.startswith(cid[:n]) for o in others))


def test_container_info_accepts_a_unique_id_prefix_as_crictl_does(pod: Pods) -> None:
    _, cid = _running_container(pod)
    full = json.loads(http(pod.run, "GET", f"/containers/{cid}").body)
    shortest = _shortest_unique_prefix(cid, _container_ids(pod))
    for prefix in {shortest, cid[:12]}:
        answer = http(pod.run, "GET", f"/containers/{prefix}")
        assert answer.status == 200, (prefix, answer.body)
        assert json.loads(answer.body) == full


def test_an_id_prefix_matching_no_container_is_404(pod: Pods) -> None:
    _running_container(pod)
    ids = _container_ids(pod)
    unused = next(c for c in "0123456789abcdef" if not any(i.startswith(c) for i in ids)) * 12
    answer = http(pod.run, "GET", f"/containers/{unused}")
    assert answer.status == 404
    assert unused in answer.body


def test_an_ambiguous_id_prefix_is_400_naming_the_candidates(pod: Pods) -> None:
    """400, not 409: 409 means a container's state forbids the action; here the request names no one container."""
    sid = pod.run_pod(sandbox_config())
    by_first: dict[str, list[str]] = {}
    # 17 IDs always share a first hex digit; a pair usually turns up within a handful.
    for n in range(17):
        cid = pod.create(sid, container_config(pod.image, ["sleep", "300"], name=f"c{n}"))
        by_first.setdefault(cid[0], []).append(cid)
        if len(by_first[cid[0]]) == 2:
            break
    prefix, pair = next((first, ids) for first, ids in by_first.items() if len(ids) == 2)
    candidates = [i for i in _container_ids(pod) if i.startswith(prefix)]
    for method, target in (("GET", f"/containers/{prefix}"), ("POST", f"/pause/{prefix}")):
        answer = http(pod.run, method, target)
        assert answer.status == 400, (target, answer.body)
        assert "ambiguous" in answer.body
        assert all(c in answer.body for c in candidates)
    # One more digit than the pair shares names one of them again.
    longer = _shortest_unique_prefix(pair[0], _container_ids(pod))
    assert json.loads(http(pod.run, "GET", f"/containers/{longer}").body)["name"].startswith("k8s_c")


def test_pause_and_unpause_accept_a_unique_id_prefix(pod: Pods) -> None:
    _, cid = _running_container(pod)
    prefix = _shortest_unique_prefix(cid, _container_ids(pod))
    answer = http(pod.run, "POST", f"/pause/{prefix}")
    assert answer.status == 200, answer.body
    assert json.loads(answer.body) == {"id": cid, "paused": True}
    assert runc_status(pod.run, cid) == "paused"
    assert http(pod.run, "POST", f"/unpause/{prefix}").status == 200
    assert runc_status(pod.run, cid) == "running"
