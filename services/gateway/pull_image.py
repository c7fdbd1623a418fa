"""CRI PullImage: imaged fetches and verifies, storaged unpacks; we return the image ID."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.images import image_name, registry_auth
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.imaged import PULL_IMAGE, PullImageRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway

# Past imaged.pull_timeout, so that imaged's own DEADLINE_EXCEEDED (naming the setting) arrives first.
_PULL_TIMEOUT_MARGIN_S = 5.0


async def pull_image(gw: Gateway, req: api_pb2.PullImageRequest, call: Call) -> api_pb2.PullImageResponse:
    name = image_name(req.image, "PullImage")
    auth = registry_auth(req.auth) if req.HasField("auth") else None
    async with gw.bounds.pulls.slot(pull_timeout(gw, call)) as timeout:
        result = await gw.imaged.call(PULL_IMAGE, PullImageRequest(name, auth), timeout)
    return api_pb2.PullImageResponse(image_ref=result.image_id)


def pull_timeout(gw: Gateway, call: Call) -> float:
    """How long imaged may take: the client's deadline, else imaged.pull_timeout.

    The kubelet sends PullImage with no deadline at all (it only cancels), and crictl too.
    `gateway.default_timeout` (120 s) is sized for quick calls: applied to a pull it would
    cut every pull of a large image at two minutes and throw its partial downloads away,
    while `imaged.pull_timeout` (600 s) is the documented bound of a pull.
    """
    if call.has_deadline:
        return call.timeout
    return max(gw.config.gateway.default_timeout, gw.config.imaged.pull_timeout + _PULL_TIMEOUT_MARGIN_S)
