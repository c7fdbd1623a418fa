"""containers-registries.conf(5), version 2: where a name is pulled from (pure).

Semantics follow containers/image's sysregistriesv2 so that one registries.conf
means the same to criplex as to CRI-O and podman:
- the [[registry]] whose prefix is the longest match of the name wins
  ("*.example.com" matches sub-domains of example.com, host part only);
- the matched prefix is replaced by `location` (a rewrite, never a fallback);
- mirrors are tried in order before the location, each rewritten the same way;
- a `blocked` registry refuses every pull of a name it matches;
- drop-ins (*.conf in lexical order) replace [[registry]] entries by prefix,
  [aliases] by name, and the search list when they set one.
The v1 format ([registries.search] ...) is refused: it is long deprecated and
silently ignoring its `block` list would be worse than failing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from services.imaged.reference import DOCKER_HUB, DOMAIN_RE, ImageReference, is_namespace, parse_reference
from shared.errors import ConfigError, PermissionDenied

PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")


@dataclass(frozen=True)
class Mirror:
    location: str
    insecure: bool = False
    pull_from_mirror: str = "all"


@dataclass(frozen=True)
class Registry:
    prefix: str
    location: str  # "" only for a wildcard prefix: pull from the matched host itself
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()


@dataclass(frozen=True)
class RegistriesConf:
    unqualified_search_registries: tuple[str, ...] | None = None  # None: not set by any file
    registries: tuple[Registry, ...] = ()  # sorted by prefix, unique prefixes
    aliases: dict[str, str] = field(default_factory=dict)  # short name -> qualified name

    def merged_with(self, dropin: RegistriesConf) -> RegistriesConf:
        by_prefix = {r.prefix: r for r in self.registries}
        by_prefix.update({r.prefix: r for r in dropin.registries})
        search = self.unqualified_search_registries
        if dropin.unqualified_search_registries is not None:
            search = dropin.unqualified_search_registries
        return RegistriesConf(search, tuple(by_prefix[p] for p in sorted(by_prefix)),
                              {**self.aliases, **dropin.aliases})


@dataclass(frozen=True)
class PullSource:
    """One place to try, in order: the rewritten reference and how to reach its host."""

    reference: ImageReference
    insecure: bool
    mirror: bool
    # A mirror whose own [[registry]] entry is blocked: never contacted, the pull falls through
    # to the next source (containers/image refuses such a source the same way).
    blocked: bool = False


_TOP_KEYS = {"unqualified-search-registries", "registry", "aliases", "short-name-mode",
             "credential-helpers", "additional-layer-store-auth-helper"}
_REGISTRY_KEYS = {"prefix", "location", "insecure", "blocked", "mirror-by-digest-only", "mirror"}
_MIRROR_KEYS = {"location", "insecure", "pull-from-mirror"}


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _get(table: dict[str, Any], key: str, kind: type, default: Any, source: str, where: str) -> Any:
    value = table.get(key, default)
    if type(value) is not kind:
        raise _fail(source, f"{where}{key}: expected {kind.__name__}, got {value!r}")
    return value


def _location(value: str, source: str, where: str) -> str:
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise _fail(source, f"{where}: invalid location {value!r}: URI schemes are not supported")
    return trimmed


def _unknown(table: dict[str, Any], known: set[str], source: str, where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise _fail(source, f"{where}unknown key {extra[0]!r} (known: {', '.join(sorted(known))})")


def _parse_mirror(table: Any, source: str, where: str) -> Mirror:
    if not isinstance(table, dict):
        raise _fail(source, f"{where}: expected a table")
    _unknown(table, _MIRROR_KEYS, source, f"{where}.")
    location = _location(_get(table, "location", str, "", source, f"{where}."), source, where)
    if not location:
        raise _fail(source, f"{where}: mirror location is unset")
    mode = _get(table, "pull-from-mirror", str, "all", source, f"{where}.") or "all"
    if mode not in PULL_FROM_MIRROR:
        raise _fail(source, f"{where}: pull-from-mirror must be one of {', '.join(PULL_FROM_MIRROR)}")
    return Mirror(location, _get(table, "insecure", bool, False, source, f"{where}."), mode)


def _parse_registry(table: Any, source: str, where: str) -> Registry:
    if not isinstance(table, dict):
        raise _fail(source, f"{where}: expected a table")
    _unknown(table, _REGISTRY_KEYS, source, f"{where}.")
    location = _location(_get(table, "location", str, "", source, f"{where}."), source, where)
    prefix = _location(_get(table, "prefix", str, "", source, f"{where}."), source, where) or location
    if not prefix:
        raise _fail(source, f"{where}: both location and prefix are unset")
    wildcard = prefix.startswith("*.")
    if wildcard and any(c in prefix for c in "/@:"):
        raise _fail(source, f"{where}: wildcard prefix {prefix!r} must look like *.example.com")
    if not wildcard and not location:
        raise _fail(source, f"{where}: location is unset and prefix {prefix!r} is not *.example.com")
    if not wildcard:
        _check_name(prefix, source, f"{where}.prefix")
    if location:
        _check_name(location, source, f"{where}.location")
    raw_mirrors = _get(table, "mirror", list, [], source, f"{where}.")
    mirrors = tuple(_parse_mirror(m, source, f"{where}.mirror[{i}]") for i, m in enumerate(raw_mirrors))
    by_digest = _get(table, "mirror-by-digest-only", bool, False, source, f"{where}.")
    if by_digest and any(m.pull_from_mirror != "all" for m in mirrors):
        raise _fail(source, f"{where}: mirror-by-digest-only and a mirror's pull-from-mirror are exclusive")
    for i, m in enumerate(mirrors):
        _check_name(m.location, source, f"{where}.mirror[{i}].location")
    return Registry(prefix, location, _get(table, "insecure", bool, False, source, f"{where}."),
                    _get(table, "blocked", bool, False, source, f"{where}."), by_digest, mirrors)


def _check_name(value: str, source: str, where: str) -> None:
    if not is_namespace(value):
        raise _fail(source, f"{where}: {value!r} is not host[:port][/namespace]")


def parse_registries_conf(text: str, source: str) -> RegistriesConf:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, f"not valid TOML: {exc}") from None
    if "registries" in data:
        raise _fail(source, "the v1 format ([registries.search] ...) is not supported; use v2 [[registry]]")
    _unknown(data, _TOP_KEYS, source, "")
    search: tuple[str, ...] | None = None
    if "unqualified-search-registries" in data:
        raw = _get(data, "unqualified-search-registries", list, [], source, "")
        search = tuple(_location(str(s), source, "unqualified-search-registries") for s in raw)
        for host in search:
            if not DOMAIN_RE.match(host):
                raise _fail(source, f"unqualified-search-registries: {host!r} is not a host[:port]")
    registries: dict[str, Registry] = {}
    for i, table in enumerate(_get(data, "registry", list, [], source, "")):
        reg = _parse_registry(table, source, f"registry[{i}]")
        # As in containers/image: the first entry of a prefix wins, later duplicates are ignored.
        registries.setdefault(reg.prefix, reg)
    _check_conflicts(registries.values(), source)
    aliases = _parse_aliases(_get(data, "aliases", dict, {}, source, ""), source)
    return RegistriesConf(search, tuple(registries[p] for p in sorted(registries)), aliases)


def _check_conflicts(registries: Any, source: str) -> None:
    seen: dict[str, Registry] = {}
    for reg in registries:
        key = reg.location or reg.prefix
        other = seen.setdefault(key, reg)
        if other.insecure != reg.insecure or other.blocked != reg.blocked:
            raise _fail(source, f"registry {key!r} is defined twice with conflicting insecure/blocked")


def _parse_aliases(table: dict[str, Any], source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for short, target in table.items():
        try:
            key, value = parse_reference(short), parse_reference(str(target))
        except Exception as exc:
            raise _fail(source, f"aliases.{short}: {exc}") from None
        if key.qualified or key.tag or key.digest:
            raise _fail(source, f"aliases.{short}: an alias must be a short name without tag or digest")
        if not value.qualified or value.tag or value.digest:
            raise _fail(source, f"aliases.{short}: {target!r} must be fully qualified, without tag or digest")
        out[key.path] = value.name
    return out


def match_length(name: str, prefix: str) -> int:
    """Length of `name` that `prefix` matches, or -1; `name` is "host/path" (no tag)."""
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return len(host) if hostname.endswith(prefix[1:]) else -1
    if name == prefix or name.startswith(prefix + "/"):
        return len(prefix)
    return -1


def find_registry(conf: RegistriesConf, name: str) -> Registry | None:
    """The entry with the longest matching prefix (the first of equals, in prefix order)."""
    best: Registry | None = None
    for reg in conf.registries:
        if match_length(name, reg.prefix) >= 0 and (best is None or len(reg.prefix) > len(best.prefix)):
            best = reg
    return best


def _rewrite(ref: ImageReference, prefix: str, location: str) -> ImageReference:
    if not location:
        return ref
    matched = match_length(ref.name, prefix)
    return ref.with_name(location + ref.name[matched:])


def pull_sources(conf: RegistriesConf, ref: ImageReference) -> list[PullSource]:
    """Where to pull the qualified `ref` from, in order; PermissionDenied when it is blocked."""
    reg = find_registry(conf, ref.name)
    if reg is None:
        return [PullSource(ref, False, False)]
    if reg.blocked:
        raise PermissionDenied(f"pulling {ref} is blocked by registries.conf (registry prefix {reg.prefix!r})")
    by_digest = bool(ref.digest)
    sources: list[PullSource] = []
    for mirror in reg.mirrors:
        if reg.mirror_by_digest_only and not by_digest:
            continue
        if ((mirror.pull_from_mirror == "digest-only" and not by_digest)
                or (mirror.pull_from_mirror == "tag-only" and by_digest)):
            continue
        mirrored = _rewrite(ref, reg.prefix, mirror.location)
        own = find_registry(conf, mirrored.name)
        sources.append(PullSource(mirrored, mirror.insecure, True, blocked=own is not None and own.blocked))
    sources.append(PullSource(_rewrite(ref, reg.prefix, reg.location), reg.insecure, False))
    return sources


def candidates(conf: RegistriesConf, ref: ImageReference) -> list[ImageReference]:
    """The qualified names a reference may mean, in the order to try them.

    A qualified name means itself. A short name means its alias when one is set,
    else each unqualified-search registry in order, else Docker Hub (as the
    kubelet and containerd assume).
    """
    if ref.qualified:
        return [ref.with_default_tag()]
    alias = conf.aliases.get(ref.path)
    if alias is not None:
        return [ref.with_name(alias).with_default_tag()]
    search = conf.unqualified_search_registries
    domains = search if search else (DOCKER_HUB,)
    return [ref.in_domain(d).with_default_tag() for d in domains]
