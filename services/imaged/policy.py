"""containers-policy.json(5): may this image be pulled at all? (pure)

Scopes for the docker transport are looked up as containers/image does
(docker/policyconfiguration): the full reference ("host/repo:tag" or
"host/repo@digest"), then the repository, each parent namespace, the host, the
wildcard domains "*.parent.domain", then the transport's "" scope, then
`default`. The first scope present decides; all of its requirements must accept.

criplex enforces `insecureAcceptAnything` and `reject`. Signature requirements
(`signedBy`, `sigstoreSigned`, `signedBaseLayer`) are parsed and refused with
FailedPrecondition: criplex does not verify signatures, and accepting an image
that the administrator required to be signed would silently defeat the policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from services.imaged.reference import ImageReference
from shared.errors import ConfigError, FailedPrecondition, PermissionDenied

ACCEPT = "insecureAcceptAnything"
REJECT = "reject"
SIGNATURE_TYPES = ("signedBy", "sigstoreSigned", "signedBaseLayer")
_KNOWN_TYPES = (ACCEPT, REJECT, *SIGNATURE_TYPES)
_TRANSPORT = "docker"


@dataclass(frozen=True)
class Requirement:
    type: str
    # Kept for error messages, e.g. the keyPath a signedBy requirement names.
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    default: tuple[Requirement, ...]
    docker_scopes: dict[str, tuple[Requirement, ...]] = field(default_factory=dict)


ACCEPT_ANYTHING = Policy((Requirement(ACCEPT),))


def _requirements(value: Any, source: str, where: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        # An empty list would accept everything by vacuous truth; containers/image refuses it too.
        raise ConfigError(f"{source}: {where}: expected a non-empty list of requirements")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise ConfigError(f"{source}: {where}[{i}]: expected an object with a string \"type\"")
        kind = item["type"]
        if kind not in _KNOWN_TYPES:
            raise ConfigError(f"{source}: {where}[{i}]: unknown requirement type {kind!r}")
        if kind in (ACCEPT, REJECT) and set(item) != {"type"}:
            extra = sorted(set(item) - {"type"})
            raise ConfigError(f"{source}: {where}[{i}]: {kind} takes no fields, got {extra}")
        out.append(Requirement(kind, {k: v for k, v in item.items() if k != "type"}))
    return tuple(out)


def _check_scope(scope: str, source: str) -> None:
    # Scopes are names or namespaces, never URLs; a typo here must not silently never match.
    if scope == "":
        return
    if "://" in scope or any(c.isspace() for c in scope) or scope.endswith("/"):
        raise ConfigError(f"{source}: transports.docker: invalid scope {scope!r}")
    if scope.startswith("*.") and any(c in scope for c in "/:@"):
        raise ConfigError(f"{source}: transports.docker: wildcard scope {scope!r} must look like *.example.com")


def parse_policy(text: str, source: str) -> Policy:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    unknown = sorted(set(data) - {"default", "transports"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    if "default" not in data:
        raise ConfigError(f"{source}: \"default\" is required")
    default = _requirements(data["default"], source, "default")
    transports = data.get("transports", {})
    if not isinstance(transports, dict):
        raise ConfigError(f"{source}: transports: expected an object")
    scopes: dict[str, tuple[Requirement, ...]] = {}
    for transport, table in transports.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: transports.{transport}: expected an object of scopes")
        for scope, reqs in table.items():
            parsed = _requirements(reqs, source, f"transports.{transport}[{scope!r}]")
            if transport == _TRANSPORT:
                _check_scope(scope, source)
                scopes[scope] = parsed
    return Policy(default, scopes)


def scope_candidates(ref: ImageReference) -> list[str]:
    """Scopes to look up for `ref`, most specific first (without "" and default)."""
    out = [str(ref)] if ref.tag or ref.digest else []
    name = ref.name
    while True:
        out.append(name)
        slash = name.rfind("/")
        if slash == -1:
            break
        name = name[:slash]
    # `name` is the host now; its port does not take part in wildcard domains.
    host = name[: name.rfind(":")] if ":" in name and not name.endswith("]") else name
    while "." in host:
        host = host[host.index(".") + 1:]
        out.append(f"*.{host}")
    return out


def requirements_for(policy: Policy, ref: ImageReference) -> tuple[str, tuple[Requirement, ...]]:
    """The scope that governs `ref` and its requirements."""
    for scope in scope_candidates(ref):
        if scope in policy.docker_scopes:
            return scope, policy.docker_scopes[scope]
    if "" in policy.docker_scopes:
        return "transports.docker[\"\"]", policy.docker_scopes[""]
    return "default", policy.default


def check(policy: Policy, ref: ImageReference) -> None:
    """Return if `ref` may be pulled; PermissionDenied or FailedPrecondition otherwise."""
    scope, reqs = requirements_for(policy, ref)
    if any(r.type == REJECT for r in reqs):
        raise PermissionDenied(f"pulling {ref} is rejected by the signature policy (scope {scope!r})")
    unsupported = [r for r in reqs if r.type in SIGNATURE_TYPES]
    if unsupported:
        kinds = ", ".join(sorted({r.type for r in unsupported}))
        raise FailedPrecondition(
            f"the signature policy requires {kinds} for {ref} (scope {scope!r}); criplex does not verify "
            "signatures, so it refuses the pull rather than accept an unverified image")
