"""Image references: parsing, validation and normalisation (pure).

The grammar is distribution/reference's (the one the docker CLI, containerd and
containers/image share), so a name means the same thing here as everywhere else:

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path-component ( "/" path-component )*

The first component is a domain only when it contains "." or ":", is
"localhost", or has an upper-case letter; otherwise the name is *unqualified*
(a short name) and registries.conf decides where it is looked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from services.imaged.digest import parse_digest
from shared.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DEFAULT_TAG = "latest"
_LEGACY_HUB_DOMAINS = ("index.docker.io", "registry-1.docker.io")
_NAME_MAX = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
DOMAIN_RE = re.compile(rf"^{_HOST}(?::[0-9]+)?$")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference; `domain` is "" while the name is still unqualified."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def qualified(self) -> bool:
        return bool(self.domain)

    @property
    def name(self) -> str:
        """The repository name, "host/path" (or just the path while unqualified)."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def in_domain(self, domain: str) -> ImageReference:
        """This short name placed in `domain`; Docker Hub's official images live under library/."""
        domain = _canonical_domain(domain)
        path = self.path
        if domain == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        return replace(self, domain=domain, path=path)

    def with_default_tag(self) -> ImageReference:
        """A reference with neither tag nor digest means ":latest"."""
        if self.tag or self.digest:
            return self
        return replace(self, tag=DEFAULT_TAG)

    def with_name(self, name: str) -> ImageReference:
        """The same tag and digest on another repository name (a registries.conf rewrite)."""
        rewritten = parse_reference(name)
        if rewritten.tag or rewritten.digest or not rewritten.qualified:
            raise InvalidArgument(f"rewritten repository {name!r} is not a fully qualified name")
        return replace(self, domain=rewritten.domain, path=rewritten.path)

    @property
    def tagged_name(self) -> str:
        """"name:tag", as CRI repo_tags are written ("" without a tag)."""
        return f"{self.name}:{self.tag}" if self.tag else ""

    @property
    def digested_name(self) -> str:
        """"name@digest", as CRI repo_digests are written ("" without a digest)."""
        return f"{self.name}@{self.digest}" if self.digest else ""


def _canonical_domain(domain: str) -> str:
    return DOCKER_HUB if domain in _LEGACY_HUB_DOMAINS else domain


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash:
        return "", name
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first, rest
    return "", name


def parse_reference(text: str) -> ImageReference:
    """Parse `text` without qualifying it: "busybox" stays a short name."""
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid image reference {text!r}: empty or surrounded by spaces")
    remainder, at, digest = text.partition("@")
    if at:
        if "@" in digest:
            raise InvalidArgument(f"invalid image reference {text!r}: more than one '@'")
        parse_digest(digest)
    tag = ""
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r} in image reference {text!r}")
    if len(remainder) > _NAME_MAX:
        raise InvalidArgument(f"invalid image reference {text!r}: name longer than {_NAME_MAX} characters")
    domain, path = _split_domain(remainder)
    if domain and not DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid registry host {domain!r} in image reference {text!r}")
    if not _PATH_RE.match(path):
        hint = " (repository names must be lower-case)" if path.lower() != path else ""
        raise InvalidArgument(f"invalid repository name {path!r} in image reference {text!r}{hint}")
    if not domain and _HEX64.match(path):
        # distribution/reference refuses these too: they would shadow image IDs.
        raise InvalidArgument(f"invalid image reference {text!r}: a 64-hex name is an image ID, not a name")
    domain = _canonical_domain(domain)
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageReference(domain, path, tag, digest)


def is_namespace(value: str) -> bool:
    """Whether `value` is "host[:port]" or "host[:port]/path" (a registries.conf prefix or location)."""
    host, slash, path = value.partition("/")
    return bool(DOMAIN_RE.match(host)) and (not slash or bool(_PATH_RE.match(path)))


def normalize(text: str, default_domain: str = DOCKER_HUB) -> ImageReference:
    """Parse and fully qualify: "busybox" -> docker.io/library/busybox:latest."""
    ref = parse_reference(text)
    if not ref.qualified:
        ref = ref.in_domain(default_domain)
    return ref.with_default_tag()
