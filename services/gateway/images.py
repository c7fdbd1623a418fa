"""Conversions between imaged's records and the CRI image messages."""

from __future__ import annotations

from shared.cri import api_pb2
from shared.errors import InvalidArgument
from shared.schema.imaged import ImageRecord, RegistryAuth


def image_name(spec: api_pb2.ImageSpec, method: str) -> str:
    if not spec.image:
        raise InvalidArgument(f"{method}: image name is empty")
    return spec.image


def to_cri_image(record: ImageRecord) -> api_pb2.Image:
    image = api_pb2.Image(
        id=record.id,
        repo_tags=record.repo_tags,
        repo_digests=record.repo_digests,
        size=record.size,
        username=record.username,
        spec=api_pb2.ImageSpec(image=record.id),
        pinned=record.pinned,
    )
    if record.uid is not None:
        image.uid.value = record.uid
    return image


def registry_auth(auth: api_pb2.AuthConfig) -> RegistryAuth | None:
    if not any((auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token)):
        return None
    return RegistryAuth(
        username=auth.username, password=auth.password, auth=auth.auth,
        server_address=auth.server_address, identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
