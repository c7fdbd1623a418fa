"""imaged's public surface: registries, pulls and image records."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.wire import Method

PULL_PROGRESS_TOPIC = "image.pull.progress"


@dataclass(frozen=True)
class RegistryAuth:
    """CRI AuthConfig: credentials the kubelet passes with a pull."""

    username: str = ""
    password: str = ""
    auth: str = ""  # base64("user:password")
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""


@dataclass(frozen=True)
class ImageRecord:
    """What criplex knows of one stored image; `id` is the config digest."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int  # bytes of the compressed layers plus config, as the CRI reports
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    chain_ids: tuple[str, ...]  # bottom layer first
    diff_ids: tuple[str, ...]
    uid: int | None = None  # the config's numeric user, when it names one
    username: str = ""  # the config's user, when it is a name
    pinned: bool = False
    created: str = ""
    platform: str = ""
    pulled_at: float = 0.0
    # The image config's runtime defaults, needed later to create containers.
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullImageRequest:
    image: str
    auth: RegistryAuth | None = None


@dataclass(frozen=True)
class PullImageResponse:
    image_id: str


@dataclass(frozen=True)
class ImageStatusRequest:
    image: str  # ID, ID prefix, tag, short name or repo digest
    verbose: bool = False


@dataclass(frozen=True)
class ImageStatusResponse:
    image: ImageRecord | None  # None: not found (the CRI answers an empty status, not an error)
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ListImagesRequest:
    image: str = ""  # filter: same forms as ImageStatusRequest.image; empty = all
    # With no filter: the generation of the caller's cached listing. When nothing has
    # changed since, the answer is `unchanged` and carries no images.
    known_generation: int = 0


@dataclass(frozen=True)
class ListImagesResponse:
    images: tuple[ImageRecord, ...]
    generation: int = 0
    unchanged: bool = False


@dataclass(frozen=True)
class RemoveImageRequest:
    image: str


@dataclass(frozen=True)
class RemoveImageResponse:
    pass


@dataclass(frozen=True)
class PullProgress:
    """Published on PULL_PROGRESS_TOPIC while a pull runs."""

    image: str
    bytes_done: int
    bytes_total: int
    layers_done: int
    layers_total: int


PULL_IMAGE = Method("pull_image", PullImageRequest, PullImageResponse)
IMAGE_STATUS = Method("image_status", ImageStatusRequest, ImageStatusResponse)
LIST_IMAGES = Method("list_images", ListImagesRequest, ListImagesResponse)
REMOVE_IMAGE = Method("remove_image", RemoveImageRequest, RemoveImageResponse)
