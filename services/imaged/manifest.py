"""OCI image manifests, indexes and configs, and Docker schema2 equivalents (pure).

Everything a registry sends is untrusted: each parser checks the shape it needs
and raises DataLoss (the content is not what it claims) or FailedPrecondition
(a valid format criplex does not handle) with a message naming the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from services.imaged.digest import parse_digest
from shared.errors import DataLoss, FailedPrecondition, InvalidArgument

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPTED = (*MANIFEST_TYPES, *INDEX_TYPES)
INT64_MAX = 2**63 - 1  # descriptor sizes are int64 (image-spec), CRI uids Int64Value

CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.container.image.v1+json")
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    # Not in the Docker schema2 text, but produced by tools and accepted by containerd.
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str = ""  # "os/arch[/variant]" in an index entry
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config criplex keeps (image-spec config.md)."""

    diff_ids: tuple[str, ...]
    platform: str
    created: str = ""
    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise DataLoss(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataLoss(f"{what} is not a JSON object")
    return data


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise DataLoss(f"{what}: descriptor is not an object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str) \
            or not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= INT64_MAX:
        raise DataLoss(f"{what}: descriptor needs a string mediaType and digest and a size from 0 to 2^63-1")
    try:
        parse_digest(digest)
    except InvalidArgument as exc:
        raise DataLoss(f"{what}: {exc.message}") from None
    platform = ""
    plat = raw.get("platform")
    if isinstance(plat, dict):
        platform = "/".join(str(p) for p in (plat.get("os", ""), plat.get("architecture", ""),
                                              plat.get("variant", "")) if p)
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return Descriptor(media_type, digest, size, platform, {str(k): str(v) for k, v in annotations.items()})


def media_type_of(body: bytes, header_type: str) -> str:
    """The manifest's media type: its own mediaType field, else the Content-Type the registry sent."""
    data = _json_object(body, "manifest")
    if data.get("schemaVersion") == 1 or header_type in DOCKER_SCHEMA1:
        raise FailedPrecondition(
            "the registry served a Docker schema 1 manifest; schema 1 is deprecated and not supported "
            "(re-push the image with a current client to get a schema 2 or OCI manifest)")
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in data:
        return OCI_INDEX
    if "layers" in data:
        return OCI_MANIFEST
    return header_type.split(";")[0].strip()


def parse_manifest(body: bytes, media_type: str) -> ImageManifest | ImageIndex:
    data = _json_object(body, "manifest")
    if data.get("schemaVersion") != 2:
        raise DataLoss(f"manifest has schemaVersion {data.get('schemaVersion')!r}, expected 2")
    if media_type in INDEX_TYPES:
        entries = data.get("manifests")
        if not isinstance(entries, list):
            raise DataLoss("image index has no \"manifests\" list")
        return ImageIndex(media_type, tuple(_descriptor(d, f"index entry {i}") for i, d in enumerate(entries)))
    if media_type not in MANIFEST_TYPES:
        raise FailedPrecondition(f"unsupported manifest media type {media_type!r}")
    config = _descriptor(data.get("config"), "manifest config")
    if config.media_type not in CONFIG_TYPES:
        raise FailedPrecondition(f"not a container image: config media type {config.media_type!r}")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list):
        raise DataLoss("manifest has no \"layers\" list")
    layers = tuple(_descriptor(d, f"layer {i}") for i, d in enumerate(raw_layers))
    for layer in layers:
        if "+encrypted" in layer.media_type:
            raise FailedPrecondition(f"layer {layer.digest} is encrypted ({layer.media_type}); not supported")
        if layer.media_type not in LAYER_TYPES:
            raise FailedPrecondition(f"layer {layer.digest} has unsupported media type {layer.media_type!r}")
    return ImageManifest(media_type, config, layers)


def normalize_platform(platform: str) -> tuple[str, str, str]:
    """(os, arch, variant) with the aliases containerd's platforms package folds together."""
    parts = platform.lower().split("/")
    os_, arch, variant = [*parts, "", ""][:3]
    arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm"}.get(
        arch, arch)
    if arch == "arm64" and variant in ("v8", "8"):
        variant = ""
    if arch == "arm" and variant in ("", "7"):
        variant = "v7"
    if arch == "amd64" and variant == "v1":
        variant = ""
    return os_, arch, variant


def select_platform(index: ImageIndex, wanted: str) -> Descriptor:
    """The index entry for `wanted` ("os/arch[/variant]"): an exact variant first, then for
    32-bit arm older variants the CPU also runs (v7 runs v6 and v5)."""
    os_, arch, variant = normalize_platform(wanted)
    matching = [d for d in index.manifests
                if d.media_type in ACCEPTED and normalize_platform(d.platform)[:2] == (os_, arch)]
    acceptable = [variant]
    if arch == "arm" and variant.startswith("v") and variant[1:].isdigit():
        acceptable += [f"v{n}" for n in range(int(variant[1:]) - 1, 4, -1)]
    for v in acceptable:
        for d in matching:
            if normalize_platform(d.platform)[2] == v:
                return d
    offered = ", ".join(sorted({d.platform for d in index.manifests if d.platform})) or "none"
    raise FailedPrecondition(f"no image for platform {wanted} in the index (it offers: {offered})")


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DataLoss(f"image config: {what} is not a list of strings")
    return tuple(value)


def parse_image_config(body: bytes) -> ImageConfig:
    data = _json_object(body, "image config")
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise DataLoss("image config: rootfs.type must be \"layers\"")
    diff_ids = _str_tuple(rootfs.get("diff_ids"), "rootfs.diff_ids")
    for d in diff_ids:
        try:
            parse_digest(d)
        except InvalidArgument as exc:
            raise DataLoss(f"image config: rootfs.diff_ids: {exc.message}") from None
    cfg = data.get("config") or {}
    if not isinstance(cfg, dict):
        raise DataLoss("image config: \"config\" is not an object")
    labels = cfg.get("Labels") or {}
    volumes = cfg.get("Volumes") or {}
    if not isinstance(labels, dict) or not isinstance(volumes, dict):
        raise DataLoss("image config: Labels and Volumes must be objects")
    platform = "/".join(str(p) for p in (data.get("os", ""), data.get("architecture", ""),
                                          data.get("variant", "")) if p)
    return ImageConfig(
        diff_ids=diff_ids,
        platform=platform,
        created=str(data.get("created") or ""),
        user=str(cfg.get("User") or ""),
        env=_str_tuple(cfg.get("Env"), "config.Env"),
        entrypoint=_str_tuple(cfg.get("Entrypoint"), "config.Entrypoint"),
        cmd=_str_tuple(cfg.get("Cmd"), "config.Cmd"),
        working_dir=str(cfg.get("WorkingDir") or ""),
        labels={str(k): str(v) for k, v in labels.items()},
        stop_signal=str(cfg.get("StopSignal") or ""),
        volumes=tuple(sorted(str(v) for v in volumes)),
    )


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))
    (image-spec config.md, "Layer ChainID")."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return tuple(out)


def user_ids(user: str) -> tuple[int | None, str]:
    """(uid, username) of a config User "name|uid[:group|gid]", as the CRI reports them.

    A uid is ASCII digits that fit the CRI's Int64Value, as containerd and CRI-O parse it
    (strconv.ParseInt); anything else is a name. str.isdigit() alone would take "²" (which
    int() refuses) and numbers too large for protobuf and msgpack, and one such image
    would break every ListImages.
    """
    head = user.split(":", 1)[0]
    if not head:
        return None, ""
    if head.isascii() and head.isdigit() and int(head) <= INT64_MAX:
        return int(head), ""
    return None, head
