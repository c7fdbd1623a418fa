"""OCI / Docker schema2 images built from busybox-static, and pushed with the distribution API.

Everything is made by our own code: layers (``tests.support.layers``), the image config
(image-spec config.md), the manifest (manifest.md, or Docker "Image Manifest V2, Schema 2")
and multi-arch indexes (image-index.md / Docker manifest list). ``tests.support.push``
puts them into a registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tests.support.layers import (
    Compression,
    Layer,
    TarBuilder,
    files_layer,
    layer_from_tar,
    sha256_digest,
    whiteout_layer,
)

ManifestFormat = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"

_LAYER_MEDIA_TYPES: dict[ManifestFormat, dict[Compression, str]] = {
    "oci": {
        "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
        "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
        "none": "application/vnd.oci.image.layer.v1.tar",
    },
    # Docker schema2 defines no zstd layer type.
    "docker": {
        "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "none": "application/vnd.docker.image.rootfs.diff.tar",
    },
}

BUSYBOX_BINARY = Path("/bin/busybox")  # Debian busybox-static
DEFAULT_APPLETS = (
    "sh", "ash", "cat", "echo", "env", "false", "grep", "head", "hostname", "id", "kill",
    "ls", "mkdir", "nc", "ps", "pwd", "readlink", "rm", "sed", "sleep", "stat", "tail",
    "test", "touch", "true", "wc", "wget", "whoami",
)  # fmt: skip
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A fixed creation time keeps the config, and so the image ID, reproducible.
CREATED = "2023-11-14T22:13:20Z"
# Where build_busybox_image(marker=...) writes its marker text.
MARKER_PATH = "/etc/criplex-marker"

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"  # noqa: E501
GROUP = b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"


def layer_media_type(layer: Layer, manifest_format: ManifestFormat) -> str:
    try:
        return _LAYER_MEDIA_TYPES[manifest_format][layer.compression]
    except KeyError:
        raise ValueError(f"{manifest_format} manifests have no {layer.compression} layer type") from None


def canonical_json(value: object) -> bytes:
    """Stable bytes for a JSON document: what we push is exactly what we digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ImageConfig:
    """The runtime-relevant part of an image config (image-spec config.md "config")."""

    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    env: tuple[str, ...] = (DEFAULT_PATH,)
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = ("sh",)
    user: str | None = None
    working_dir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    def to_json(self, diff_ids: Sequence[str]) -> bytes:
        runtime: dict[str, object] = {"Env": list(self.env)}
        if self.entrypoint is not None:
            runtime["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            runtime["Cmd"] = list(self.cmd)
        if self.user is not None:
            runtime["User"] = self.user
        if self.working_dir is not None:
            runtime["WorkingDir"] = self.working_dir
        if self.labels:
            runtime["Labels"] = dict(self.labels)
        if self.stop_signal is not None:
            runtime["StopSignal"] = self.stop_signal
        if self.exposed_ports:
            runtime["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.volumes:
            runtime["Volumes"] = {volume: {} for volume in self.volumes}
        document: dict[str, object] = {
            "created": CREATED,
            "architecture": self.architecture,
            "os": self.os,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
            "history": [{"created": CREATED, "created_by": "criplex tests/support"} for _ in diff_ids],
        }
        if self.variant is not None:
            document["variant"] = self.variant
        return canonical_json(document)

    def platform(self) -> dict[str, str]:
        platform = {"architecture": self.architecture, "os": self.os}
        if self.variant is not None:
            platform["variant"] = self.variant
        return platform


@dataclass(frozen=True)
class Image:
    """A complete single-platform image: layers, config blob and manifest bytes."""

    layers: tuple[Layer, ...]
    config: ImageConfig
    config_blob: bytes
    manifest: bytes
    manifest_format: ManifestFormat

    @property
    def config_digest(self) -> str:
        """Also the image ID as the CRI reports it."""
        return sha256_digest(self.config_blob)

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def manifest_media_type(self) -> str:
        return OCI_MANIFEST if self.manifest_format == "oci" else DOCKER_MANIFEST

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    def blobs(self) -> Iterator[tuple[str, bytes]]:
        """(digest, bytes) of every blob the manifest references, config first."""
        yield self.config_digest, self.config_blob
        for layer in self.layers:
            yield layer.digest, layer.blob

    def descriptor(self) -> dict[str, object]:
        """This image's entry in an index / manifest list."""
        return {
            "mediaType": self.manifest_media_type,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
            "platform": self.config.platform(),
        }


@dataclass(frozen=True)
class Index:
    """A multi-platform image index (OCI) or manifest list (Docker)."""

    images: tuple[Image, ...]
    manifest: bytes
    manifest_format: ManifestFormat

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def media_type(self) -> str:
        return OCI_INDEX if self.manifest_format == "oci" else DOCKER_MANIFEST_LIST


def build_image(
    layers: Sequence[Layer],
    config: ImageConfig | None = None,
    *,
    manifest_format: ManifestFormat = "oci",
    annotations: Mapping[str, str] | None = None,
) -> Image:
    config = config or ImageConfig()
    config_blob = config.to_json([layer.diff_id for layer in layers])
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if manifest_format == "oci" else DOCKER_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG if manifest_format == "oci" else DOCKER_CONFIG,
            "digest": sha256_digest(config_blob),
            "size": len(config_blob),
        },
        "layers": [
            {"mediaType": layer_media_type(layer, manifest_format), "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    if annotations:
        if manifest_format != "oci":
            raise ValueError("annotations exist only in OCI manifests")
        manifest["annotations"] = dict(annotations)
    return Image(
        layers=tuple(layers),
        config=config,
        config_blob=config_blob,
        manifest=canonical_json(manifest),
        manifest_format=manifest_format,
    )


def build_index(images: Sequence[Image], *, manifest_format: ManifestFormat | None = None) -> Index:
    manifest_format = manifest_format or images[0].manifest_format
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if manifest_format == "oci" else DOCKER_MANIFEST_LIST,
        "manifests": [image.descriptor() for image in images],
    }
    return Index(images=tuple(images), manifest=canonical_json(document), manifest_format=manifest_format)


def busybox_layer(
    compression: Compression = "gzip",
    *,
    applets: Sequence[str] = DEFAULT_APPLETS,
    link_kind: Literal["symlink", "hardlink"] = "symlink",
    busybox: Path = BUSYBOX_BINARY,
) -> Layer:
    """A base layer: /bin/busybox, applet links, a minimal /etc, and the usual empty dirs.

    ``link_kind="hardlink"`` mirrors the official busybox image, whose applets are
    hardlinks: a good exercise for an extractor's hardlink handling.
    """
    builder = TarBuilder()
    for directory in ("bin", "dev", "etc", "proc", "root", "sys", "usr/bin", "var"):
        builder.dir(directory, mode=0o700 if directory == "root" else 0o755)
    builder.dir("tmp", mode=0o1777)
    builder.dir("home/app", uid=1000, gid=1000)
    builder.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in applets:
        if link_kind == "symlink":
            builder.symlink(f"bin/{applet}", "busybox")
        else:
            builder.hardlink(f"bin/{applet}", "bin/busybox")
    builder.file("etc/passwd", PASSWD)
    builder.file("etc/group", GROUP)
    builder.file("etc/hostname", b"criplex-test\n")
    return builder.layer(compression)


def build_busybox_image(
    extra_layers: Sequence[Layer | bytes] = (),
    *,
    compression: Compression = "gzip",
    manifest_format: ManifestFormat = "oci",
    architecture: str = "amd64",
    variant: str | None = None,
    user: str | None = None,
    env: Sequence[str] = (),
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = ("sh",),
    working_dir: str | None = None,
    labels: Mapping[str, str] | None = None,
    stop_signal: str | None = None,
    marker: str | None = None,
    link_kind: Literal["symlink", "hardlink"] = "symlink",
) -> Image:
    """busybox base layer, then ``marker`` (a file at MARKER_PATH), then ``extra_layers``.

    ``extra_layers`` items are ``Layer``s or raw tar bytes (compressed with
    ``compression``). ``env`` entries are appended after PATH.
    """
    layers = [busybox_layer(compression, link_kind=link_kind)]
    if marker is not None:
        layers.append(files_layer({MARKER_PATH: marker.encode() + b"\n"}, compression))
    for extra in extra_layers:
        layers.append(layer_from_tar(extra, compression) if isinstance(extra, bytes) else extra)
    config = ImageConfig(
        architecture=architecture,
        variant=variant,
        env=(DEFAULT_PATH, *env),
        entrypoint=tuple(entrypoint) if entrypoint is not None else None,
        cmd=tuple(cmd) if cmd is not None else None,
        user=user,
        working_dir=working_dir,
        labels=dict(labels or {}),
        stop_signal=stop_signal,
    )
    return build_image(layers, config, manifest_format=manifest_format)


def build_multiarch_busybox(*, compression: Compression = "gzip", manifest_format: ManifestFormat = "oci") -> Index:
    """linux/amd64 + linux/arm64/v8, told apart by MARKER_PATH ("amd64" / "arm64").

    Both carry the host's (amd64) busybox: the arm64 entry exists to test platform
    selection, not to run. The shared base layer is one blob in the registry.
    """
    amd64 = build_busybox_image(compression=compression, manifest_format=manifest_format, marker="amd64")
    arm64 = build_busybox_image(
        compression=compression,
        manifest_format=manifest_format,
        architecture="arm64",
        variant="v8",
        marker="arm64",
    )
    return build_index([amd64, arm64])


# Paths for build_whiteout_image: what a correct overlay of its layers shows.
WHITEOUT_PRESENT = {"/data/keep": b"keep\n", "/opq/new": b"new\n"}
WHITEOUT_ABSENT = ("/data/gone", "/data/gone-dir", "/data/gone-dir/inner", "/opq/old", "/opq/sub")


def build_whiteout_image(compression: Compression = "gzip", *, manifest_format: ManifestFormat = "oci") -> Image:
    """busybox + a layer of files + a layer deleting some (``.wh.``) and hiding /opq (opaque).

    After unpacking, WHITEOUT_PRESENT exist with that content and WHITEOUT_ABSENT do not;
    no ``.wh.*`` name may remain in the rootfs.
    """
    lower = TarBuilder()
    lower.file("data/keep", b"keep\n")
    lower.file("data/gone", b"gone\n")
    lower.file("data/gone-dir/inner", b"inner\n")
    lower.file("opq/old", b"old\n")
    lower.file("opq/sub/deep", b"deep\n")
    upper = whiteout_layer(
        deleted=["/data/gone", "/data/gone-dir"],
        opaque_dirs=["/opq"],
        added={"/opq/new": b"new\n"},
        compression=compression,
    )
    return build_busybox_image(
        [lower.layer(compression), upper], compression=compression, manifest_format=manifest_format
    )
