"""Putting images into a registry with the OCI distribution API, nothing but httpx.

distribution-spec spec.md: "Pushing blobs" (POST then PUT ``?digest=``, after a HEAD to
skip blobs the registry has), "Pushing Manifests" (PUT with the manifest's media type).
Works against ``Registry`` and ``LyingRegistry`` alike, with or without basic auth.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from tests.support.images import SCHEMA1_SIGNED_MANIFEST, Image, Index
from tests.support.layers import sha256_digest


class RegistryEndpoint(Protocol):
    """Anything that hands out an httpx client for a registry: Registry, LyingRegistry."""

    def client(self, *, auth: bool = True, timeout: float = 30.0) -> httpx.Client: ...


class PushError(RuntimeError):
    pass


def split_reference(reference: str) -> tuple[str, str]:
    """``"repo/name:tag"`` -> ("repo/name", "tag"); no tag means "latest"."""
    name, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:
        return reference, "latest"
    return name, tag


def _expect(response: httpx.Response, *statuses: int) -> httpx.Response:
    if response.status_code not in statuses:
        request = response.request
        raise PushError(f"{request.method} {request.url}: {response.status_code} {response.text[:500]}")
    return response


def push_blob(client: httpx.Client, name: str, digest: str, data: bytes) -> bool:
    """Monolithic upload; False when the registry already had the blob."""
    if client.head(f"/v2/{name}/blobs/{digest}").status_code == 200:
        return False
    started = _expect(client.post(f"/v2/{name}/blobs/uploads/"), 202)
    # Location may be absolute or relative and already carries query state (_state=...).
    location = client.base_url.join(started.headers["Location"]).copy_merge_params({"digest": digest})
    headers = {"Content-Type": "application/octet-stream"}
    _expect(client.put(location, content=data, headers=headers), 201)
    return True


def push_manifest(client: httpx.Client, name: str, reference: str, body: bytes, media_type: str) -> str:
    """PUT a manifest under a tag or digest; returns the digest the registry reports."""
    headers = {"Content-Type": media_type}
    response = _expect(client.put(f"/v2/{name}/manifests/{reference}", content=body, headers=headers), 201)
    return response.headers.get("Docker-Content-Digest", sha256_digest(body))


def _push_image(client: httpx.Client, name: str, reference: str, image: Image) -> str:
    for digest, data in image.blobs():
        push_blob(client, name, digest, data)
    digest = push_manifest(client, name, reference, image.manifest, image.manifest_media_type)
    if digest != image.manifest_digest:
        raise PushError(f"registry stored {name} as {digest}, we sent {image.manifest_digest}")
    return digest


def push(registry: RegistryEndpoint, reference: str, image: Image) -> str:
    """Push ``image`` as ``"name:tag"``; returns its manifest digest."""
    name, tag = split_reference(reference)
    with registry.client() as client:
        return _push_image(client, name, tag, image)


def push_index(registry: RegistryEndpoint, reference: str, index: Index) -> str:
    """Push each platform's image (manifest by digest), then the index under the tag."""
    name, tag = split_reference(reference)
    with registry.client() as client:
        for image in index.images:
            _push_image(client, name, image.manifest_digest, image)
        digest = push_manifest(client, name, tag, index.manifest, index.media_type)
    if digest != index.digest:
        raise PushError(f"registry stored {name} index as {digest}, we sent {index.digest}")
    return digest


def fetch_schema1(registry: RegistryEndpoint, reference: str) -> bytes:
    """The registry's own schema1 (signed, prettyjws) rendering of a Docker schema2 image.

    distribution 2.8 converts a stored Docker schema2 manifest to schema1 on the fly
    when the client's Accept offers nothing newer (even with schema1 pushes disabled);
    an OCI manifest is not converted (404 MANIFEST_UNKNOWN).
    """
    name, tag = split_reference(reference)
    with registry.client() as client:
        response = _expect(client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": SCHEMA1_SIGNED_MANIFEST}), 200)
    if response.headers.get("Content-Type") != SCHEMA1_SIGNED_MANIFEST:
        raise PushError(f"expected a schema1 manifest for {reference}, got {response.headers.get('Content-Type')}")
    return response.content


def push_schema1(registry: RegistryEndpoint, reference: str, image: Image) -> str:
    """Store ``reference`` as a genuine schema1 manifest; returns the registry's digest for it.

    Needs ``Registry(schema1=True)`` and a ``manifest_format="docker"`` image. Schema1
    must be JWS-signed, so rather than sign one ourselves we push the image as schema2,
    let the registry render and sign its schema1 form (``fetch_schema1``), and PUT
    that back under the same tag (the signed payload names the tag, so it must match).
    Afterwards the tag serves schema1 whatever the client accepts.
    """
    name, tag = split_reference(reference)
    push(registry, reference, image)
    signed = fetch_schema1(registry, reference)
    with registry.client() as client:
        return push_manifest(client, name, tag, signed, SCHEMA1_SIGNED_MANIFEST)
