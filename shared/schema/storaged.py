"""storaged's public surface: the layer store, image references, container root filesystems."""

from __future__ import annotations

from dataclasses import dataclass

from shared.wire import Method


@dataclass(frozen=True)
class ApplyLayerRequest:
    """Unpack a verified blob that imaged left in storaged's incoming directory.

    `blob` is a file name inside `<storaged root>/incoming/`; storaged removes it
    once the layer is stored (or refused). The uncompressed stream must hash to
    `diff_id`, or the layer is refused and nothing stays behind.

    With `growing`, the blob is still downloading into `incoming/<growing>`: storaged
    unpacks it as it grows, up to `size` bytes, and commits only once imaged has linked
    that same file as `blob` (its digest verified). A streamed failure does not judge the
    layer (imaged may have restarted or dropped the download meanwhile): `blob` is left to
    imaged, which applies it again without `growing` if its download verified.
    """

    chain_id: str
    parent_chain_id: str  # "" for the bottom layer
    diff_id: str
    blob: str
    media_type: str
    growing: str = ""
    size: int = 0  # of the growing blob, from the manifest


@dataclass(frozen=True)
class Layer:
    chain_id: str
    parent_chain_id: str
    diff_id: str
    size: int  # bytes on disk of the unpacked layer
    inodes: int


@dataclass(frozen=True)
class HasLayersRequest:
    chain_ids: tuple[str, ...]


@dataclass(frozen=True)
class HasLayersResponse:
    present: tuple[bool, ...]


@dataclass(frozen=True)
class ImageLayersRequest:
    """Hold (or, with chain_id "", release) an image's reference on its top layer chain."""

    image_id: str
    chain_id: str


@dataclass(frozen=True)
class ImageLayersResponse:
    removed_layers: int = 0


@dataclass(frozen=True)
class SyncImagesRequest:
    """imaged's full set of images at its start: references held for others are dropped."""

    images: dict[str, str]  # image id -> top chain id


@dataclass(frozen=True)
class SyncImagesResponse:
    dropped: tuple[str, ...]
    removed_layers: int


@dataclass(frozen=True)
class CreateRootfsRequest:
    container_id: str
    chain_id: str  # the image's top layer chain


@dataclass(frozen=True)
class Rootfs:
    container_id: str
    chain_id: str
    path: str  # the mounted overlay


@dataclass(frozen=True)
class RemoveRootfsRequest:
    container_id: str


@dataclass(frozen=True)
class RemoveRootfsResponse:
    pass


@dataclass(frozen=True)
class ListRootfsRequest:
    pass


@dataclass(frozen=True)
class ListRootfsResponse:
    container_ids: tuple[str, ...]  # every container that has a recorded rootfs


@dataclass(frozen=True)
class RootfsUsageRequest:
    container_ids: tuple[str, ...]


@dataclass(frozen=True)
class RootfsUsage:
    container_id: str
    bytes: int  # what the container wrote: its upper dir
    inodes: int


@dataclass(frozen=True)
class RootfsUsageResponse:
    usage: tuple[RootfsUsage, ...]  # containers without a rootfs are left out


@dataclass(frozen=True)
class FsUsageRequest:
    pass


@dataclass(frozen=True)
class FsUsage:
    timestamp_ns: int
    mountpoint: str
    image_bytes: int
    image_inodes: int
    container_mountpoint: str
    container_bytes: int
    container_inodes: int


APPLY_LAYER = Method("apply_layer", ApplyLayerRequest, Layer)
HAS_LAYERS = Method("has_layers", HasLayersRequest, HasLayersResponse)
SET_IMAGE_LAYERS = Method("set_image_layers", ImageLayersRequest, ImageLayersResponse)
SYNC_IMAGES = Method("sync_images", SyncImagesRequest, SyncImagesResponse)
CREATE_ROOTFS = Method("create_rootfs", CreateRootfsRequest, Rootfs)
REMOVE_ROOTFS = Method("remove_rootfs", RemoveRootfsRequest, RemoveRootfsResponse)
LIST_ROOTFS = Method("list_rootfs", ListRootfsRequest, ListRootfsResponse)
ROOTFS_USAGE = Method("rootfs_usage", RootfsUsageRequest, RootfsUsageResponse)
FS_USAGE = Method("fs_usage", FsUsageRequest, FsUsage)
