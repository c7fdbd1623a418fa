"""CRI ListImages, optionally filtered by one image name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.images import to_cri_image
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.imaged import LIST_IMAGES, ListImagesRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def list_images(gw: Gateway, req: api_pb2.ListImagesRequest, call: Call) -> api_pb2.ListImagesResponse:
    result = await gw.imaged.call(LIST_IMAGES, ListImagesRequest(req.filter.image.image), call.timeout)
    return api_pb2.ListImagesResponse(images=[to_cri_image(r) for r in result.images])
