"""CRI ImageStatus: an unknown image is an empty response, not an error (CRI contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.images import image_name, to_cri_image
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.imaged import IMAGE_STATUS, ImageStatusRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def image_status(gw: Gateway, req: api_pb2.ImageStatusRequest, call: Call) -> api_pb2.ImageStatusResponse:
    name = image_name(req.image, "ImageStatus")
    result = await gw.imaged.call(IMAGE_STATUS, ImageStatusRequest(name, req.verbose), call.timeout)
    if result.image is None:
        return api_pb2.ImageStatusResponse()
    return api_pb2.ImageStatusResponse(image=to_cri_image(result.image), info=result.info)
