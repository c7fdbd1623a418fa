"""CRI RemoveImage by ID, tag or digest; removing a missing image succeeds (CRI contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.images import image_name
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.imaged import REMOVE_IMAGE, RemoveImageRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def remove_image(gw: Gateway, req: api_pb2.RemoveImageRequest, call: Call) -> api_pb2.RemoveImageResponse:
    await gw.imaged.call(REMOVE_IMAGE, RemoveImageRequest(image_name(req.image, "RemoveImage")), call.timeout)
    return api_pb2.RemoveImageResponse()
