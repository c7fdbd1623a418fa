"""CRI RunPodSandbox: monitord makes the pod's namespaces and files while netd makes its network.

The two run at once; the pod is READY once both are done (START_SANDBOX). A failure of
either rolls back the other. A gateway killed midway leaves a CREATING record and maybe a
network: the reconciler removes both (see ARCHITECTURE.md, "Pods and containers").
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from services.gateway.pull_image import pull_timeout
from services.gateway.sandboxes import check_sandbox_config
from services.gateway.view import to_json
from shared.cri import api_pb2
from shared.errors import AlreadyExists, CriplexError, FailedPrecondition, InvalidArgument
from shared.schema.imaged import IMAGE_STATUS, PULL_IMAGE, ImageRecord, ImageStatusRequest, PullImageRequest
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
from shared.schema.storaged import CREATE_ROOTFS, REMOVE_ROOTFS, CreateRootfsRequest, RemoveRootfsRequest

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
    options = config.linux.security_context.namespace_options
    host_network = options.network == api_pb2.NODE
    sandbox_id = secrets.token_hex(32)
    with gw.inflight.hold(sandbox_id):
        made = gw.monitord.call(CREATE_SANDBOX, CreateSandboxRequest(sandbox_id, to_json(config), handler),
                                call.timeout)
        networked = None if host_network else gw.netd.call(
            CREATE_NETWORK, network_request(sandbox_id, config), call.timeout)
        # Only a pod sharing its PID namespace needs an infra container to hold it.
        infra = infra_rootfs(gw, sandbox_id, call) if options.pid == api_pb2.POD else None
        network_result, infra_result, *errors = await _gather(made, networked, infra)
        if errors:
            await _roll_back(gw, sandbox_id, call)
            raise _first(errors)
        network = network_result if isinstance(network_result, PodNetwork) else None
        rootfs, pause = infra_result if isinstance(infra_result, tuple) else ("", None)
        try:
            record = await gw.monitord.call(START_SANDBOX, StartSandboxRequest(
                sandbox_id, network.netns_path if network else "", network.ips if network else (),
                infra_rootfs=rootfs, infra_image=pause), call.timeout)
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


async def _gather(made: Awaitable[object], networked: Awaitable[object] | None,
                  infra: Awaitable[object] | None) -> list[object]:
    """Run the independent steps at once: [network, infra, *errors]."""
    steps = [made, networked or _nothing(), infra or _nothing()]
    _, network, pause, *_ = results = await asyncio.gather(*steps, return_exceptions=True)
    return [network, pause, *(r for r in results if isinstance(r, BaseException))]


async def _nothing() -> None:
    return None


async def infra_rootfs(gw: Gateway, sandbox_id: str, call: Call) -> tuple[str, ImageRecord]:
    """The pause image's rootfs for the infra container, keyed by the sandbox ID as in CRI-O."""
    pause = gw.config.imaged.pause_image
    status = await gw.imaged.call(IMAGE_STATUS, ImageStatusRequest(pause), call.timeout)
    if status.image is None:
        await gw.imaged.call(PULL_IMAGE, PullImageRequest(pause), pull_timeout(gw, call))
        status = await gw.imaged.call(IMAGE_STATUS, ImageStatusRequest(pause), call.timeout)
    if status.image is None or not status.image.chain_ids:
        raise FailedPrecondition(f"the pause image {pause} is not available")
    rootfs = await gw.storaged.call(CREATE_ROOTFS, CreateRootfsRequest(sandbox_id, status.image.chain_ids[-1]),
                                    call.timeout)
    return rootfs.path, status.image


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
    with contextlib.suppress(CriplexError):
        await gw.storaged.call(REMOVE_ROOTFS, RemoveRootfsRequest(sandbox_id), timeout)
