"""CRI RemoveContainer: monitord forgets the container (killing it if it runs), then storaged
removes its rootfs. Idempotent: an unknown container is already removed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from services.gateway.containers import container_id
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.errors import CriplexError
from shared.schema.monitord import REMOVE_CONTAINER, ContainerRef
from shared.schema.storaged import REMOVE_ROOTFS, RemoveRootfsRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway

log = logging.getLogger(__name__)


async def remove_container(gw: Gateway, req: api_pb2.RemoveContainerRequest, call: Call
                           ) -> api_pb2.RemoveContainerResponse:
    id_ = container_id(req.container_id, "RemoveContainer")
    with gw.inflight.hold(id_):
        await gw.monitord.call(REMOVE_CONTAINER, ContainerRef(id_), call.timeout)
        record = gw.view.containers.get(id_)
        if record is not None:
            gw.view.forget("container", id_, record.revision + 1)
        try:
            await gw.storaged.call(REMOVE_ROOTFS, RemoveRootfsRequest(id_), call.timeout)
        except CriplexError as exc:
            log.warning("RemoveContainer %s: rootfs not removed (%s); the reconciler will retry", id_, exc.message)
    return api_pb2.RemoveContainerResponse()
