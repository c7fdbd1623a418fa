"""What netd hands each plugin besides its config: CNI_ARGS and the runtimeConfig capabilities.

Pure functions of the pod's request and the node's pod CIDR (CNI spec, "Deriving
runtimeConfig"; the capability names are the CNI conventions document's):

- `portMappings`: `[{hostPort, containerPort, protocol, hostIP}]` for the portmap plugin;
- `bandwidth`: `{ingressRate, ingressBurst, egressRate, egressBurst}` in bits/s and bits,
  from the pod annotations `kubernetes.io/ingress-bandwidth` / `egress-bandwidth`;
- `ipRanges`: `[[{subnet}], ...]` from the pod CIDR(s), read by host-local.
"""

from __future__ import annotations

import ipaddress
import json
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from services.netd.cni_conf import NetworkConfig, Plugin
from shared.errors import InvalidArgument
from shared.schema.netd import CreateNetworkRequest

INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
# The kubelet's limits for the bandwidth annotations (1 kbit/s to 1 Pbit/s).
_MIN_RATE, _MAX_RATE = 1_000, 10**15
# What the kubelet passes as the burst: no limit that tc would refuse.
_BURST = 2**31 - 1

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def cni_args(request: CreateNetworkRequest) -> str:
    # IgnoreUnknown: plugins that parse CNI_ARGS strictly would refuse the K8S_ keys.
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={request.pod_namespace};K8S_POD_NAME={request.pod_name};"
            f"K8S_POD_INFRA_CONTAINER_ID={request.sandbox_id};K8S_POD_UID={request.pod_uid}")


def parse_quantity(text: str) -> int:
    """A Kubernetes quantity ("10M", "1Gi", "1.5e6") as an integer, rounded up as Quantity.Value() does."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a quantity")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"{text!r} is not a quantity") from exc
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else _SUFFIX[suffix]
    return int((value * scale).to_integral_value(ROUND_CEILING))


def bandwidth(annotations: dict[str, str]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for direction, key in (("ingress", INGRESS_ANNOTATION), ("egress", EGRESS_ANNOTATION)):
        text = annotations.get(key)
        if text is None:
            continue
        try:
            rate = parse_quantity(text)
        except ValueError as exc:
            raise InvalidArgument(f"annotation {key}: {exc}") from exc
        if not _MIN_RATE <= rate <= _MAX_RATE:
            raise InvalidArgument(f"annotation {key}: {text!r} is outside 1k to 1P bits per second")
        limits[f"{direction}Rate"] = rate
        limits[f"{direction}Burst"] = _BURST
    return limits


def ip_ranges(pod_cidr: str) -> list[list[dict[str, str]]]:
    # One range set per CIDR: a dual-stack node gets one address of each family.
    return [[{"subnet": cidr}] for cidr in split_cidrs(pod_cidr)]


def split_cidrs(pod_cidr: str) -> list[str]:
    """The kubelet's comma-separated pod CIDR(s), validated and normalized."""
    cidrs = []
    for part in pod_cidr.split(","):
        if not part.strip():
            continue
        try:
            cidrs.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError as exc:
            raise InvalidArgument(f"pod CIDR {part.strip()!r:.60} is not a CIDR") from exc
    return cidrs


def capability_args(request: CreateNetworkRequest, pod_cidr: str) -> dict[str, Any]:
    """Everything the runtime can offer; each plugin gets only what its `capabilities` ask for.
    An empty capability is left out, so a plugin sees runtimeConfig only for what applies."""
    args: dict[str, Any] = {}
    ports = [{"hostPort": p.host_port, "containerPort": p.container_port, "protocol": (p.protocol or "tcp").lower(),
              "hostIP": p.host_ip} for p in request.port_mappings if p.host_port > 0]
    if ports:
        args["portMappings"] = ports
    limits = bandwidth(request.annotations)
    if limits:
        args["bandwidth"] = limits
    if pod_cidr:
        args["ipRanges"] = ip_ranges(pod_cidr)
    return args


def plugin_stdin(network: NetworkConfig, plugin: Plugin, capabilities: dict[str, Any],
                 prev_result: dict[str, Any] | None) -> bytes:
    """The plugin's config with what the spec says the runtime injects: name, cniVersion,
    runtimeConfig (only the capabilities it declares) and prevResult."""
    conf = dict(plugin.conf)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    runtime = {key: value for key, value in capabilities.items() if key in plugin.capabilities}
    if runtime:
        conf["runtimeConfig"] = runtime
    else:
        conf.pop("runtimeConfig", None)
    if prev_result is not None:
        conf["prevResult"] = prev_result
    else:
        conf.pop("prevResult", None)
    return json.dumps(conf, separators=(",", ":")).encode()
