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
    image_fs_info,
    image_status,
    list_images,
    pull_image,
    remove_image,
    status,
    version,
)
from services.gateway.instrument import Handler, instrument
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway

ROUTES: dict[str, Handler] = {
    "Version": version.version,
    "Status": status.status,
    "PullImage": pull_image.pull_image,
    "ImageStatus": image_status.image_status,
    "ListImages": list_images.list_images,
    "RemoveImage": remove_image.remove_image,
    "ImageFsInfo": image_fs_info.image_fs_info,
}

_AREAS = {
    "PodSandbox": "pod sandboxes (netd + monitord)",
    "Container": "containers (monitord)",
    "Exec": "streaming: exec/attach/port-forward",
    "Attach": "streaming: exec/attach/port-forward",
    "PortForward": "streaming: exec/attach/port-forward",
    "Stats": "stats and metrics",
    "Metric": "stats and metrics",
    "Checkpoint": "checkpoint/restore",
    "Events": "container events",
    "RuntimeConfig": "runtime configuration",
}


def _area(method: str) -> str:
    for needle, area in _AREAS.items():
        if needle in method:
            return area
    return "a later milestone"


def _unimplemented(method: str, streaming: bool) -> Any:
    message = f"criplex does not implement {method} yet (area: {_area(method)})"

    async def unary(_request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    async def stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
        yield None  # pragma: no cover - makes this an async generator

    return stream if streaming else unary


def _service_handler(gateway: Gateway, service: descriptor.ServiceDescriptor) -> grpc.GenericRpcHandler:
    handlers = {}
    for m in service.methods:
        request_cls = factory.GetMessageClass(m.input_type)
        response_cls = factory.GetMessageClass(m.output_type)
        kwargs = {"request_deserializer": request_cls.FromString,
                  "response_serializer": response_cls.SerializeToString}
        if m.server_streaming:
            handlers[m.name] = grpc.unary_stream_rpc_method_handler(_unimplemented(m.name, True), **kwargs)
        elif m.name in ROUTES:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                instrument(gateway, m.name, ROUTES[m.name]), **kwargs)
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(_unimplemented(m.name, False), **kwargs)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def generic_handlers(gateway: Gateway) -> tuple[grpc.GenericRpcHandler, ...]:
    services = api_pb2.DESCRIPTOR.services_by_name
    return (_service_handler(gateway, services["RuntimeService"]),
            _service_handler(gateway, services["ImageService"]))
