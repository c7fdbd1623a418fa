"""CRI RunPodSandbox: monitord makes the pod's namespaces and files while netd makes its network.

The two run at once; the pod is READY once both are done (START_SANDBOX). A failure of
either rolls back the other. A gateway killed midway leaves a CREATING record and maybe a
network: the reconciler removes both (see ARCHITECTURE.md, "Pods and containers").
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from services.gateway.sandboxes import check_sandbox_config
from services.gateway.view import to_json
from shared.cri import api_pb2
from shared.errors import AlreadyExists, CriplexError, InvalidArgument
from shared.schema.monitord import (
    CREATE_SANDBOX,
    REMOVE_SANDBOX,
    START_SANDBOX,
    CreateSandboxRequest,
    SandboxRef,
    StartSandboxRequest,
)
from shared.schema.netd import (
    CREATE_NETWORK,
    REMOVE_NETWORK,
    CreateNetworkRequest,
    PodNetwork,
    PortMapping,
    RemoveNetworkRequest,
)

if TYPE_CHECKING:
    from services.gateway.app import Gateway

_PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}


def sandbox_name(meta: api_pb2.PodSandboxMetadata) -> str:
    return f"k8s_POD_{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


async def run_pod_sandbox(gw: Gateway, req: api_pb2.RunPodSandboxRequest, call: Call
                          ) -> api_pb2.RunPodSandboxResponse:
    config = req.config
    check_sandbox_config(config)
    handler = req.runtime_handler or gw.config.monitord.default_runtime
    if handler not in gw.config.monitord.runtimes:
        raise InvalidArgument(f"RunPodSandbox: unknown runtime handler {handler!r} "
                              f"(configured: {', '.join(sorted(gw.config.monitord.runtimes))})")
    await gw.view.wait_synced()
    name = sandbox_name(config.metadata)
    for existing in gw.view.sandboxes.values():
        if existing.name == name:
            raise AlreadyExists(f"pod sandbox name {name!r} is reserved for {existing.id}")
    host_network = config.linux.security_context.namespace_options.network == api_pb2.NODE
    sandbox_id = secrets.token_hex(32)
    with gw.inflight.hold(sandbox_id):
        made = asyncio.ensure_future(gw.monitord.call(
            CREATE_SANDBOX, CreateSandboxRequest(sandbox_id, to_json(config), handler), call.timeout))
        networked = None if host_network else asyncio.ensure_future(
            gw.netd.call(CREATE_NETWORK, network_request(sandbox_id, config), call.timeout))
        results = await asyncio.gather(made, *([networked] if networked else []), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await _roll_back(gw, sandbox_id, call)
            raise _first(errors)
        network = results[1] if networked else None
        assert network is None or isinstance(network, PodNetwork)
        try:
            record = await gw.monitord.call(START_SANDBOX, StartSandboxRequest(
                sandbox_id, network.netns_path if network else "", network.ips if network else ()), call.timeout)
        except CriplexError:
            await _roll_back(gw, sandbox_id, call)
            raise
        gw.view.apply_sandbox(record)
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


def network_request(sandbox_id: str, config: api_pb2.PodSandboxConfig) -> CreateNetworkRequest:
    meta = config.metadata
    return CreateNetworkRequest(
        sandbox_id=sandbox_id, pod_name=meta.name, pod_namespace=meta.namespace, pod_uid=meta.uid,
        port_mappings=tuple(PortMapping(_PROTOCOLS.get(p.protocol, "tcp"), p.container_port, p.host_port,
                                        p.host_ip) for p in config.port_mappings),
        annotations=dict(config.annotations), cgroup_parent=config.linux.cgroup_parent,
    )


def _first(errors: list[BaseException]) -> BaseException:
    # monitord's verdict on the request (e.g. a taken name) says more than a network failure.
    for error in errors:
        if isinstance(error, AlreadyExists | InvalidArgument):
            return error
    return errors[0]


async def _roll_back(gw: Gateway, sandbox_id: str, call: Call) -> None:
    """Best effort: whatever fails here, the reconciler removes later."""
    timeout = max(call.timeout, 10.0)
    await asyncio.gather(
        gw.monitord.call(REMOVE_SANDBOX, SandboxRef(sandbox_id), timeout),
        gw.netd.call(REMOVE_NETWORK, RemoveNetworkRequest(sandbox_id), timeout),
        return_exceptions=True,
    )
