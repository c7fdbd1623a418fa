"""CRI PullImage: imaged fetches and verifies, storaged unpacks; we return the image ID."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.images import image_name, registry_auth
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.imaged import PULL_IMAGE, PullImageRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def pull_image(gw: Gateway, req: api_pb2.PullImageRequest, call: Call) -> api_pb2.PullImageResponse:
    name = image_name(req.image, "PullImage")
    auth = registry_auth(req.auth) if req.HasField("auth") else None
    result = await gw.imaged.call(PULL_IMAGE, PullImageRequest(name, auth), call.timeout)
    return api_pb2.PullImageResponse(image_ref=result.image_id)
