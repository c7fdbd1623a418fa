"""Registry credentials and the distribution auth handshake.

Pure parts: the kubelet's AuthConfig and containers-auth.json(5) into
`Credentials`; the WWW-Authenticate header (RFC 7235) into `Challenge`s; a
token cache. The one I/O function, `fetch_token`, implements the token
endpoint of the distribution spec ("docker token auth"): GET the realm with
HTTP basic credentials, or the OAuth2 refresh-token POST when only an identity
token is known.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from shared.errors import ConfigError, InvalidArgument, Unauthenticated, Unavailable
from shared.schema.imaged import RegistryAuth

_CLIENT_ID = "criplex"
_DEFAULT_TOKEN_LIFETIME_S = 60  # distribution token spec: when expires_in is absent
_LEGACY_HUB_KEYS = ("index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # an OAuth2 refresh token for the registry's token endpoint
    registry_token: str = ""  # a bearer token sent as is, no handshake

    def fingerprint(self) -> str:
        """A cache key that tells credentials apart without keeping the secrets in it."""
        raw = "\0".join((self.username, self.password, self.identity_token, self.registry_token))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def __repr__(self) -> str:  # never log secrets
        return f"Credentials(username={self.username!r}, ...)"


def _decode_basic(value: str, what: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(f"{what}: \"auth\" is not base64 of \"user:password\"") from None
    user, colon, password = decoded.partition(":")
    if not colon:
        raise InvalidArgument(f"{what}: \"auth\" does not decode to \"user:password\"")
    return user, password


def from_cri(auth: RegistryAuth | None) -> Credentials | None:
    """The kubelet's AuthConfig; `auth` (base64 user:password) wins over username/password."""
    if auth is None:
        return None
    username, password = auth.username, auth.password
    if auth.auth:
        username, password = _decode_basic(auth.auth, "pull auth")
    creds = Credentials(username, password, auth.identity_token, auth.registry_token)
    return None if creds == Credentials() else creds


def _auth_key(key: str) -> tuple[str, bool]:
    """Normalise an auths key to "host[/path]"; the bool says it is a legacy URL (host-only) key."""
    legacy = "://" in key
    if legacy:
        key = key.split("://", 1)[1].split("/", 1)[0]
    key = key.rstrip("/")
    host, slash, path = key.partition("/")
    if host in _LEGACY_HUB_KEYS:
        host = "docker.io"
    return host + (slash + path if slash else ""), legacy


@dataclass(frozen=True)
class AuthFile:
    """containers-auth.json: inline credentials, and the credential helpers that hold the rest."""

    entries: dict[str, Credentials] = field(default_factory=dict)  # "host[/path]" -> credentials
    helpers: dict[str, str] = field(default_factory=dict)  # credHelpers: host -> helper name
    store: str = ""  # credsStore: the helper for every registry without a better answer


def parse_auth_file(text: str, source: str) -> dict[str, Credentials]:
    """containers-auth.json: {"auths": {"host[/path]": {"auth": base64}}} -> key -> Credentials."""
    return parse_auth_config(text, source).entries


def _helper_name(value: object, source: str, where: str) -> str:
    # The name becomes part of an executable's name: no path, no surprises.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ConfigError(f"{source}: {where}: {value!r} is not a credential helper name")
    return value


def parse_auth_config(text: str, source: str) -> AuthFile:
    """All of containers-auth.json: "auths", "credHelpers" and "credsStore"."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None
    auths = data.get("auths", {}) if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise ConfigError(f"{source}: expected {{\"auths\": {{...}}}}")
    raw_helpers = data.get("credHelpers", {})
    if not isinstance(raw_helpers, dict):
        raise ConfigError(f"{source}: credHelpers: expected {{\"host\": \"helper\"}}")
    helpers = {_auth_key(host)[0]: _helper_name(name, source, f"credHelpers[{host!r}]")
               for host, name in raw_helpers.items()}
    store = data.get("credsStore") or ""
    if store:
        store = _helper_name(store, source, "credsStore")
    return AuthFile(_parse_auths(auths, source), helpers, store)


def _parse_auths(auths: dict[str, Any], source: str) -> dict[str, Credentials]:
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: auths[{key!r}]: expected an object")
        username, password = "", ""
        if entry.get("auth"):
            try:
                username, password = _decode_basic(str(entry["auth"]), f"{source}: auths[{key!r}]")
            except InvalidArgument as exc:
                raise ConfigError(exc.message) from None
        creds = Credentials(username, password, str(entry.get("identitytoken") or ""))
        if creds == Credentials():
            continue
        norm, legacy = _auth_key(key)
        # A path-scoped entry is more specific than a legacy URL key for the same host.
        if legacy and norm in out:
            continue
        out[norm] = creds
    return out


def lookup(auths: dict[str, Credentials], name: str) -> Credentials | None:
    """Most specific entry for repository `name` ("host/ns/repo"): the repo, its namespaces, the host."""
    while True:
        creds = auths.get(name)
        if creds is not None:
            return creds
        slash = name.rfind("/")
        if slash == -1:
            return None
        name = name[:slash]


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower-case: "bearer", "basic"
    params: dict[str, str] = field(default_factory=dict)  # names lower-case


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges, e.g. `Bearer realm="https://a/token",service="reg",scope="x"`."""
    challenges: list[Challenge] = []
    pos, n = 0, len(header)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and header[pos] in chars:
            pos += 1

    while pos < n:
        skip(" \t,")
        m = _TOKEN.match(header, pos)
        if not m:
            break
        scheme, pos = m.group().lower(), m.end()
        params: dict[str, str] = {}
        skip(" \t")
        t68 = _TOKEN68.match(header, pos)
        if t68 and header[t68.end():].lstrip(" \t")[:1] in ("", ","):
            # token68 form (e.g. "Negotiate abc=="): registries do not use it; kept as the "" param.
            params[""], pos = t68.group(), t68.end()
            challenges.append(Challenge(scheme, params))
            continue
        while pos < n:
            start = pos
            skip(" \t")
            name = _TOKEN.match(header, pos)
            if not name:
                break
            after = name.end()
            while after < n and header[after] in " \t":
                after += 1
            if after >= n or header[after] != "=":
                pos = start  # the next challenge's scheme
                break
            pos = after + 1
            skip(" \t")
            value, pos = _param_value(header, pos)
            params[name.group().lower()] = value
            skip(" \t")
            if pos < n and header[pos] == ",":
                pos += 1
            else:
                break
        challenges.append(Challenge(scheme, params))
    return challenges


def _param_value(header: str, pos: int) -> tuple[str, int]:
    if pos < len(header) and header[pos] == '"':
        out, pos = [], pos + 1
        while pos < len(header) and header[pos] != '"':
            if header[pos] == "\\" and pos + 1 < len(header):
                pos += 1
            out.append(header[pos])
            pos += 1
        return "".join(out), pos + 1
    m = _TOKEN.match(header, pos)
    return (m.group(), m.end()) if m else ("", pos)


def pull_scope(repository: str) -> str:
    """The token scope for pulling `repository` (the path, without the host)."""
    return f"repository:{repository}:pull"


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class TokenCache:
    """Bearer tokens by (realm, service, scope, credentials); reused until shortly before expiry."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}

    def get(self, key: tuple[str, str, str, str], now: float | None = None) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, expires_at = entry
        if (time.monotonic() if now is None else now) >= expires_at:
            del self._tokens[key]
            return None
        return token

    def drop(self, key: tuple[str, str, str, str]) -> None:
        """Forget a token the registry refused before its time was up."""
        self._tokens.pop(key, None)

    def put(self, key: tuple[str, str, str, str], token: str, lifetime_s: float,
            now: float | None = None) -> None:
        # Renew early: a token that expires between our check and the registry's is a spurious 401.
        margin = min(30.0, lifetime_s * 0.1)
        self._tokens[key] = (token, (time.monotonic() if now is None else now) + lifetime_s - margin)


def parse_token_response(body: bytes) -> tuple[str, float]:
    """(token, lifetime seconds) from a token endpoint's JSON answer."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise Unauthenticated("the registry's token endpoint answered something that is not JSON") from None
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise Unauthenticated("the registry's token endpoint answered without a token")
    expires = data.get("expires_in")
    lifetime = float(expires) if isinstance(expires, int | float) and expires > 0 else _DEFAULT_TOKEN_LIFETIME_S
    return token, lifetime


async def fetch_token(http: httpx.AsyncClient, challenge: Challenge, scope: str,
                      creds: Credentials | None, allow_plain_http: bool) -> tuple[str, float]:
    """Obtain a bearer token for `scope` as `challenge` directs."""
    realm = challenge.params.get("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise Unauthenticated(f"the registry's bearer challenge has no usable realm ({realm!r})")
    if realm.startswith("http://") and creds is not None and not allow_plain_http:
        raise Unauthenticated(f"refusing to send credentials to a plain-HTTP token realm {realm}")
    service = challenge.params.get("service", "")
    try:
        if creds is not None and creds.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": _CLIENT_ID, "scope": scope}
            if service:
                form["service"] = service
            response = await http.post(realm, data=form)
        else:
            params = {"scope": scope, "client_id": _CLIENT_ID}
            if service:
                params["service"] = service
            headers = {"Authorization": basic_header(creds)} if creds is not None and creds.username else {}
            response = await http.get(realm, params=params, headers=headers)
    except (httpx.TransportError, ssl.SSLError) as exc:  # httpcore passes TLS alerts on raw
        raise Unavailable(f"token endpoint {realm}: {type(exc).__name__}: {exc}") from None
    if response.status_code in (401, 403):
        raise Unauthenticated(f"token endpoint {realm} refused the credentials ({response.status_code})")
    if response.status_code >= 500:
        raise Unavailable(f"token endpoint {realm} answered {response.status_code}")
    if response.status_code != 200:
        raise Unauthenticated(f"token endpoint {realm} answered {response.status_code}")
    return parse_token_response(response.content)
