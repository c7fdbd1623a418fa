"""Routes every CRI v1 method to its handler module; it only routes.

Every RPC of `runtime.v1.RuntimeService` and `runtime.v1.ImageService` is
registered, read from the proto descriptor itself so none can be forgotten.
Methods without a handler answer UNIMPLEMENTED naming the area that will bring them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor
from google.protobuf import message_factory as factory

from services.gateway import (
    attach,
    container_stats,
    container_status,
    create_container,
    exec,
    exec_sync,
    get_container_events,
    image_fs_info,
    image_status,
    list_container_stats,
    list_containers,
    list_images,
    list_pod_sandbox,
    list_pod_sandbox_stats,
    pod_sandbox_stats,
    pod_sandbox_status,
    port_forward,
    pull_image,
    remove_container,
    remove_image,
    remove_pod_sandbox,
    reopen_container_log,
    run_pod_sandbox,
    runtime_config,
    start_container,
    status,
    stop_container,
    stop_pod_sandbox,
    update_container_resources,
    update_runtime_config,
    version,
)
from services.gateway.instrument import (
    Handler,
    StreamHandler,
    instrument,
    instrument_stream,
    serializer,
    tolerant_deserializer,
)
from shared.cri import api_pb2
from shared.errors import Unimplemented

if TYPE_CHECKING:
    from services.gateway.app import Gateway

ROUTES: dict[str, Handler] = {
    "Version": version.version,
    "Status": status.status,
    "RuntimeConfig": runtime_config.runtime_config,
    "UpdateRuntimeConfig": update_runtime_config.update_runtime_config,
    "RunPodSandbox": run_pod_sandbox.run_pod_sandbox,
    "StopPodSandbox": stop_pod_sandbox.stop_pod_sandbox,
    "RemovePodSandbox": remove_pod_sandbox.remove_pod_sandbox,
    "PodSandboxStatus": pod_sandbox_status.pod_sandbox_status,
    "ListPodSandbox": list_pod_sandbox.list_pod_sandbox,
    "CreateContainer": create_container.create_container,
    "StartContainer": start_container.start_container,
    "StopContainer": stop_container.stop_container,
    "RemoveContainer": remove_container.remove_container,
    "ContainerStatus": container_status.container_status,
    "ListContainers": list_containers.list_containers,
    "ExecSync": exec_sync.exec_sync,
    "Exec": exec.exec_,
    "Attach": attach.attach,
    "PortForward": port_forward.port_forward,
    "UpdateContainerResources": update_container_resources.update_container_resources,
    "ReopenContainerLog": reopen_container_log.reopen_container_log,
    "ContainerStats": container_stats.container_stats,
    "ListContainerStats": list_container_stats.list_container_stats,
    "PodSandboxStats": pod_sandbox_stats.pod_sandbox_stats,
    "ListPodSandboxStats": list_pod_sandbox_stats.list_pod_sandbox_stats,
    "PullImage": pull_image.pull_image,
    "ImageStatus": image_status.image_status,
    "ListImages": list_images.list_images,
    "RemoveImage": remove_image.remove_image,
    "ImageFsInfo": image_fs_info.image_fs_info,
}

STREAM_ROUTES: dict[str, StreamHandler] = {
    "GetContainerEvents": get_container_events.get_container_events,
}

# What is not built yet, and where it will come from. UpdatePodSandboxResources answers
# UNIMPLEMENTED on purpose: a newer kubelet treats exactly that as "not supported".
_AREAS = {
    "Metric": "metrics",
    "Checkpoint": "checkpoint/restore",
    "UpdatePodSandboxResources": "pod-level resource updates",
}


def _area(method: str) -> str:
    for needle, area in _AREAS.items():
        if needle in method:
            return area
    return "a later milestone"


def _unimplemented(method: str) -> Handler:
    message = f"criplex does not implement {method} yet (area: {_area(method)})"

    async def unary(_gw: Gateway, _request: Any, _call: Any) -> Any:
        raise Unimplemented(message)

    return unary


def _unimplemented_stream(method: str) -> StreamHandler:
    message = f"criplex does not implement {method} yet (area: {_area(method)})"

    async def stream(_gw: Gateway, _request: Any, _call: Any) -> AsyncIterator[Any]:
        raise Unimplemented(message)
        yield None  # pragma: no cover - makes this an async generator

    return stream


def _service_handler(gateway: Gateway, service: descriptor.ServiceDescriptor) -> grpc.GenericRpcHandler:
    handlers = {}
    for m in service.methods:
        request_cls = factory.GetMessageClass(m.input_type)
        response_cls = factory.GetMessageClass(m.output_type)
        kwargs = {"request_deserializer": tolerant_deserializer(request_cls),
                  "response_serializer": serializer(response_cls)}
        if m.server_streaming:
            stream = STREAM_ROUTES.get(m.name) or _unimplemented_stream(m.name)
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(
                instrument_stream(gateway, m.name, stream), **kwargs)
        else:
            unary = ROUTES.get(m.name) or _unimplemented(m.name)
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(instrument(gateway, m.name, unary), **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def generic_handlers(gateway: Gateway) -> tuple[grpc.GenericRpcHandler, ...]:
    services = api_pb2.DESCRIPTOR.services_by_name
    return (_service_handler(gateway, services["RuntimeService"]),
            _service_handler(gateway, services["ImageService"]))
