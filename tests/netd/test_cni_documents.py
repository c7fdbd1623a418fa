"""CNI documents read and written without I/O: configs, results of every version, runtimeConfig, quantities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import default_conflist, install_default_network
from services.netd.cni_conf import ConfigInvalid, parse_network
from services.netd.cni_result import plugin_error, pod_ips
from services.netd.cni_runtime import capability_args, cni_args, parse_quantity, plugin_stdin
from shared.config import Config, NetdConfig
from shared.errors import InvalidArgument
from shared.schema.netd import CreateNetworkRequest, PortMapping


def _find(kind: str) -> str | None:
    return f"/bin/{kind}" if kind != "missing" else None


def test_a_single_plugin_conf_is_read_as_a_list_of_one():
    network = parse_network(b'{"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "b"}', "x.conf", _find)
    assert (network.name, network.cni_version, [p.type for p in network.plugins]) == ("n", "0.4.0", ["bridge"])
    assert network.plugins[0].path == "/bin/bridge" and network.plugins[0].conf["bridge"] == "b"
    assert json.loads(network.raw)["plugins"][0]["type"] == "bridge"


@pytest.mark.parametrize(("doc", "complaint"), [
    (b"{nope", "not JSON"),
    (b'{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}', "network name"),
    (b'{"cniVersion": "9.9.9", "name": "n", "plugins": [{"type": "bridge"}]}', "cniVersion"),
    (b'{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "no plugins"),
    (b'{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}', "no valid type"),
    (b'{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "missing"}]}', "'missing' is not in the CNI bin"),
])
def test_a_config_that_cannot_work_is_refused_saying_why(doc, complaint):
    with pytest.raises(ConfigInvalid, match=complaint):
        parse_network(doc, "f.conflist", _find)


def test_pod_ips_are_ipv4_first_without_prefix_and_only_on_the_pods_interface():
    result = {"cniVersion": "1.0.0",
              "interfaces": [{"name": "cni0"}, {"name": "lo", "sandbox": "/ns"}, {"name": "eth0", "sandbox": "/ns"}],
              "ips": [{"address": "fd00::5/64", "interface": 2}, {"address": "127.0.0.1/8", "interface": 1},
                      {"address": "10.88.0.5/16", "interface": 2, "gateway": "10.88.0.1"}]}
    assert pod_ips(result, "eth0") == ("10.88.0.5", "fd00::5")


def test_pod_ips_read_0_3_and_0_2_results():
    assert pod_ips({"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
                    "ips": [{"version": "4", "address": "10.1.0.2/24", "interface": 0}]}, "eth0") == ("10.1.0.2",)
    assert pod_ips({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.3/24"}, "ip6": {"ip": "fd00::3/64"}},
                   "eth0") == ("10.1.0.3", "fd00::3")


def test_a_plugin_error_is_its_json_message_or_else_its_stderr():
    assert str(plugin_error(b'{"code": 7, "msg": "bad config", "details": "x"}', b"", 1)) == \
        "bad config (x) [CNI error code 7]"
    assert str(plugin_error(b"", b"panic: oops\n", 2)) == "panic: oops"
    assert str(plugin_error(b"", b"", 3)) == "exited with status 3"


@pytest.mark.parametrize(("text", "value"), [("10M", 10_000_000), ("1Gi", 2**30), ("1.5k", 1500), ("100", 100),
                                             ("1e6", 1_000_000), ("2500m", 3)])
def test_quantities_read_as_kubernetes_reads_them(text, value):
    assert parse_quantity(text) == value


def test_runtime_config_carries_ports_bandwidth_and_ranges_only_to_plugins_that_ask():
    request = CreateNetworkRequest("s" * 64, "p", "ns", "u", (PortMapping("TCP", 80, 8080, "127.0.0.1"),
                                                              PortMapping("udp", 53, 0)),
                                   {"kubernetes.io/ingress-bandwidth": "10M"})
    args = capability_args(request, "10.244.1.0/24, fd00:1::/64")
    assert args == {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
                    "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 2**31 - 1},
                    "ipRanges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]]}
    network = parse_network(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "bridge", "capabilities": {"ipRanges": True}},
        {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}}]}).encode(), "f", _find)
    bridge = json.loads(plugin_stdin(network, network.plugins[0], args, None))
    assert bridge["runtimeConfig"] == {"ipRanges": args["ipRanges"]} and "prevResult" not in bridge
    portmap = json.loads(plugin_stdin(network, network.plugins[1], args, {"cniVersion": "1.0.0"}))
    assert portmap["runtimeConfig"] == {"portMappings": args["portMappings"]}
    assert (portmap["name"], portmap["cniVersion"], portmap["prevResult"]) == ("n", "1.0.0", {"cniVersion": "1.0.0"})
    assert cni_args(request) == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;"
                                 f"K8S_POD_INFRA_CONTAINER_ID={'s' * 64};K8S_POD_UID=u")


@pytest.mark.parametrize("value", ["fast", "10", "2P"])
def test_a_bandwidth_annotation_out_of_range_is_invalid(value):
    request = CreateNetworkRequest("s", "p", "ns", "u", annotations={"kubernetes.io/egress-bandwidth": value})
    with pytest.raises(InvalidArgument, match="egress-bandwidth"):
        capability_args(request, "")


def test_criplex_up_installs_the_default_network_only_into_an_empty_conf_dir(tmp_path: Path):
    rendered = json.loads(default_conflist("10.77.0.0/16"))
    assert rendered["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.77.0.0/16"}]]
    assert parse_network(default_conflist("10.77.0.0/16"), "default").name == "criplex"
    config = Config(netd=NetdConfig(cni_conf_dir=str(tmp_path / "net.d"), default_subnet="10.77.0.0/16"))
    installed = install_default_network(config)
    assert installed == tmp_path / "net.d" / "10-criplex.conflist"
    assert json.loads(installed.read_text()) == rendered
    installed.unlink()
    (tmp_path / "net.d" / "05-other.conf").write_text("{}")
    assert install_default_network(config) is None
