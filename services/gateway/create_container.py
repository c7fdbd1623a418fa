"""CRI CreateContainer: imaged names the image, storaged mounts its rootfs, monitord creates
the container (OCI spec, conmon, runc create).

storaged's rootfs exists before monitord's record; the container ID is held in flight
meanwhile, and a gateway killed in between leaves a rootfs whose owner monitord never
recorded: the reconciler removes it.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING

from services.gateway import sandboxes
from services.gateway.instrument import Call
from services.gateway.view import to_json
from shared.cri import api_pb2
from shared.errors import AlreadyExists, CriplexError, FailedPrecondition, InvalidArgument, NotFound
from shared.schema.imaged import IMAGE_STATUS, ImageRecord, ImageStatusRequest
from shared.schema.monitord import CREATE_CONTAINER, CreateContainerRequest, SandboxState
from shared.schema.storaged import CREATE_ROOTFS, REMOVE_ROOTFS, CreateRootfsRequest, RemoveRootfsRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


def container_name(meta: api_pb2.ContainerMetadata, pod: api_pb2.PodSandboxMetadata) -> str:
    return f"k8s_{meta.name}_{pod.name}_{pod.namespace}_{pod.uid}_{meta.attempt}"


async def create_container(gw: Gateway, req: api_pb2.CreateContainerRequest, call: Call
                           ) -> api_pb2.CreateContainerResponse:
    config = req.config
    id_ = sandboxes.sandbox_id(req.pod_sandbox_id, "CreateContainer")
    if not config.metadata.name:
        raise InvalidArgument("CreateContainer: metadata.name is empty")
    if not config.image.image:
        raise InvalidArgument("CreateContainer: image is empty")
    await gw.view.wait_synced()
    sandbox = sandboxes.require(gw.view.sandbox(id_), id_)
    if sandbox.state is not SandboxState.READY:
        raise FailedPrecondition(f"pod sandbox {id_} is not ready")
    name = container_name(config.metadata, gw.view.sandbox_config(sandbox).metadata)
    for existing in gw.view.containers.values():
        if existing.name == name:
            raise AlreadyExists(f"container name {name!r} is reserved for {existing.id}")
    status = await gw.imaged.call(IMAGE_STATUS, ImageStatusRequest(config.image.image), call.timeout)
    if status.image is None:
        raise NotFound(f"image {config.image.image!r} not found: pull it first")
    image = status.image
    if not image.chain_ids:
        raise FailedPrecondition(f"image {image.id} has no layers")
    container_id = secrets.token_hex(32)
    with gw.inflight.hold(container_id):
        rootfs = await gw.storaged.call(CREATE_ROOTFS, CreateRootfsRequest(container_id, image.chain_ids[-1]),
                                        call.timeout)
        try:
            record = await gw.monitord.call(CREATE_CONTAINER, CreateContainerRequest(
                container_id, id_, to_json(config), image, image_ref(image, config.image.image), rootfs.path,
            ), call.timeout)
        except CriplexError:
            with contextlib.suppress(CriplexError):  # else the reconciler removes it
                await gw.storaged.call(REMOVE_ROOTFS, RemoveRootfsRequest(container_id), max(call.timeout, 10.0))
            raise
        gw.view.apply_container(record)
    return api_pb2.CreateContainerResponse(container_id=container_id)


def image_ref(image: ImageRecord, requested: str) -> str:
    """The repo digest of the repository the kubelet named, as containerd reports it."""
    repo = requested.split("@", 1)[0].rsplit(":", 1)[0] if "/" in requested else ""
    for digest in image.repo_digests:
        if repo and digest.startswith(repo + "@"):
            return digest
    return image.repo_digests[0] if image.repo_digests else image.id
