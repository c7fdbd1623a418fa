"""CRI ListImages, optionally filtered by one image name.

The unfiltered listing is cached here by imaged's generation: while no image
changes, imaged answers "unchanged" and the kubelet's frequent ListImages costs one
small nng hop instead of converting every record twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.gateway.images import to_cri_image
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.imaged import LIST_IMAGES, ListImagesRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


@dataclass
class ImageListCache:
    generation: int = 0
    response: api_pb2.ListImagesResponse = field(default_factory=api_pb2.ListImagesResponse)


async def list_images(gw: Gateway, req: api_pb2.ListImagesRequest, call: Call) -> api_pb2.ListImagesResponse:
    name = req.filter.image.image
    cache = gw.image_list_cache
    result = await gw.imaged.call(LIST_IMAGES, ListImagesRequest(name, 0 if name else cache.generation),
                                  call.timeout)
    if result.unchanged:
        return cache.response
    response = api_pb2.ListImagesResponse(images=[to_cri_image(r) for r in result.images])
    if not name:
        cache.generation, cache.response = result.generation, response
    return response
