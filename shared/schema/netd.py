"""netd's public surface: a pod's network namespace and (with the networking work) its CNI networks.

netd owns one `PodNetwork` record per sandbox ID. The gateway creates it during
RunPodSandbox, removes it during StopPodSandbox/RemovePodSandbox (idempotently), and
removes those whose sandbox monitord no longer knows (the reconciler).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.wire import Method


@dataclass(frozen=True)
class PortMapping:
    protocol: str  # "tcp" | "udp" | "sctp"
    container_port: int
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True)
class CreateNetworkRequest:
    sandbox_id: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    port_mappings: tuple[PortMapping, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""


@dataclass(frozen=True)
class PodNetwork:
    sandbox_id: str
    netns_path: str  # the pinned network namespace (a bind mount of nsfs)
    ips: tuple[str, ...] = ()  # IPv4 first, then IPv6, no prefix length; the first is the primary IP
    interface: str = ""
    created_at: int = 0  # unix ns
    # The CNI network the pod is attached to (recorded before ADD, so a DEL after a crash
    # knows it): its name and the sha256 of the config list netd keeps a copy of. Empty: none.
    cni_network: str = ""
    cni_config: str = ""


@dataclass(frozen=True)
class RemoveNetworkRequest:
    sandbox_id: str


@dataclass(frozen=True)
class RemoveNetworkResponse:
    existed: bool


@dataclass(frozen=True)
class NodeNetworkRequest:
    """What the kubelet says of the node's network (CRI UpdateRuntimeConfig): the pod CIDR(s),
    comma-separated, fed to CNI as runtimeConfig.ipRanges for the pods made after it."""

    pod_cidr: str


@dataclass(frozen=True)
class NodeNetworkResponse:
    pass


@dataclass(frozen=True)
class ListNetworksRequest:
    pass


@dataclass(frozen=True)
class ListNetworksResponse:
    networks: tuple[PodNetwork, ...]


CREATE_NETWORK = Method("create_network", CreateNetworkRequest, PodNetwork)
REMOVE_NETWORK = Method("remove_network", RemoveNetworkRequest, RemoveNetworkResponse)
SET_NODE_NETWORK = Method("set_node_network", NodeNetworkRequest, NodeNetworkResponse)
LIST_NETWORKS = Method("list_networks", ListNetworksRequest, ListNetworksResponse)
