"""An OCI distribution-spec client for pulling: manifests, small blobs, and layer downloads.

Why httpx: it is already a criplex dependency, is asyncio-native with streamed
bodies, per-request redirects that drop Authorization when leaving the origin,
and pluggable transports, so the retry, resume and auth logic below is unit-
tested with `httpx.MockTransport` and checked against a real registry.

Nothing unverified is used: manifests and configs are hashed before they are
parsed, and a layer is streamed to a file while hashed; the caller deletes the
file once it cannot be resumed. Transient failures (connection errors, 429, 5xx) are
retried with backoff; an interrupted layer download resumes with a Range request,
also from the bytes an earlier imaged left on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from services.imaged import auth
from services.imaged.connections import Connection
from services.imaged.digest import digest_of, is_digest, new_hasher, verify_bytes
from services.imaged.manifest import ACCEPTED, Descriptor, media_type_of
from shared.errors import (
    CriplexError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

MANIFEST_LIMIT = 4 * 1024 * 1024  # containers/image's limit for manifests and configs
CONFIG_LIMIT = 4 * 1024 * 1024
_ERROR_BODY_LIMIT = 64 * 1024
_DOWNLOAD_CHUNK = 1 << 20
_TRANSIENT_STATUS = (429, 500, 502, 503, 504)
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# httpcore passes a TLS alert received while reading on as the raw ssl.SSLError. Mid-body it is
# an interruption like any other (the download resumes); before the headers, see _transport_failure.
_BODY_INTERRUPTIONS = (*_TRANSIENT_ERRORS, ssl.SSLError)
# Alerts with which a server refuses the client's certificate, or its absence (RFC 8446 §6.2).
_CLIENT_CERT_REFUSED = ("SSLV3_ALERT_BAD_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                        "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED")
_MAX_BACKOFF_S = 8.0
_MAX_RETRY_AFTER_S = 30.0

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    media_type: str
    digest: str  # sha256 of body, computed here


_NOT_FOUND_CODES = ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN")
_INVALID_CODES = ("NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "MANIFEST_INVALID")


def registry_error(status: int, body: bytes, what: str) -> CriplexError:
    """A registry's error answer as criplex's error, keeping the registry's own words."""
    code, message = "", ""
    try:
        errors = json.loads(body).get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "")
            message = str(errors[0].get("message") or "")
    except (ValueError, AttributeError):
        pass
    text = f"{what}: {status} {code or 'error'}" + (f": {message}" if message else "")
    if code in _NOT_FOUND_CODES or status == 404:
        return NotFound(text)
    if code == "UNAUTHORIZED" or status == 401:
        return Unauthenticated(text)
    if code == "DENIED" or status == 403:
        return PermissionDenied(text)
    if code == "TOOMANYREQUESTS" or status == 429:
        return ResourceExhausted(text)
    if code in _INVALID_CODES:
        return InvalidArgument(text)
    if status >= 500:
        return Unavailable(text)
    return FailedPrecondition(text)


def _backoff(attempt: int) -> float:
    return min(_MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)


def _retry_after(response: httpx.Response, attempt: int) -> float:
    value = response.headers.get("Retry-After", "")
    if value.isascii() and value.isdigit():
        return min(_MAX_RETRY_AFTER_S, float(value))
    return _backoff(attempt)


def _transport_failure(host: str, what: str, exc: Exception) -> CriplexError:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return Unavailable(f"{what}: TLS verification of {host} failed ({text}); add its CA to "
                           f"certs.d/{host}/ or mark the registry insecure in registries.conf")
    if isinstance(exc, ssl.SSLError) and exc.reason in _CLIENT_CERT_REFUSED:
        return Unauthenticated(f"{what}: {host} refused our TLS client certificate or its absence ({text}); "
                               f"put the one it accepts in certs.d/{host}/ as NAME.cert with NAME.key")
    return Unavailable(f"{what}: cannot reach {host}: {type(exc).__name__}: {text}")


class RegistryClient:
    """Pulls from one repository on one registry host."""

    def __init__(self, connection: Connection, repository: str, credentials: auth.Credentials | None,
                 tokens: auth.TokenCache, auth_http: httpx.AsyncClient, retries: int,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.connection = connection
        self.repository = repository
        self._creds = credentials
        self._tokens = tokens
        self._auth_http = auth_http
        self._retries = retries
        self._sleep = sleep
        self._authorization = ""
        if credentials is not None and credentials.registry_token:
            self._authorization = f"Bearer {credentials.registry_token}"

    @property
    def host(self) -> str:
        return self.connection.host

    async def manifest(self, reference: str) -> FetchedManifest:
        """GET a manifest by tag or digest; a digest reference is verified against the body."""
        what = f"manifest {self.host}/{self.repository}{'@' if is_digest(reference) else ':'}{reference}"
        body, content_type = await self._get_small(f"/v2/{self.repository}/manifests/{reference}",
                                                   {"Accept": ", ".join(ACCEPTED)}, MANIFEST_LIMIT, what)
        if is_digest(reference):
            verify_bytes(body, reference, what)
        media_type = media_type_of(body, content_type)
        return FetchedManifest(body, media_type, digest_of(body))

    async def blob(self, descriptor: Descriptor, limit: int = CONFIG_LIMIT) -> bytes:
        """A small blob (an image config) in memory, verified."""
        what = f"blob {self.host}/{self.repository}@{descriptor.digest}"
        if descriptor.size > limit:
            raise FailedPrecondition(f"{what}: {descriptor.size} bytes is more than the {limit} allowed")
        body, _ = await self._get_small(f"/v2/{self.repository}/blobs/{descriptor.digest}", {}, limit, what)
        verify_bytes(body, descriptor.digest, what)
        if len(body) != descriptor.size:
            raise DataLoss(f"{what}: {len(body)} bytes, the manifest says {descriptor.size}")
        return body

    async def download(self, descriptor: Descriptor, dest: Path, on_bytes: Callable[[int], None],
                       pause: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stream a layer blob into `dest` while hashing it; raise DataLoss unless it verifies.

        `pause` is awaited between two chunks (pulls yield to pod starts, shared/pod_starts.py).
        Bytes already in `dest` (what an interrupted imaged left, see layers.py) are hashed
        again and the download goes on after them with a Range request. They were never
        verified on their own, so if the whole then fails to verify, the blob is fetched once
        more from its start before DataLoss is the answer.
        """
        what = f"blob {self.host}/{self.repository}@{descriptor.digest}"
        with dest.open("r+b" if dest.exists() else "w+b") as out:
            hasher, written = await asyncio.to_thread(_rehash, out, descriptor)
            kept = written
            if kept:
                on_bytes(kept)
            hasher, written = await self._receive(descriptor, out, hasher, written, on_bytes, what, pause)
            if kept and not _verifies(descriptor, hasher, written):
                log.warning("%s: the %d bytes kept from an interrupted download did not verify; "
                            "fetching it from the start", what, kept)
                out.seek(0)
                out.truncate()
                on_bytes(-written)
                hasher, written = await self._receive(descriptor, out, new_hasher(descriptor.digest), 0,
                                                      on_bytes, what, pause)
        if not _verifies(descriptor, hasher, written):
            actual = f"{descriptor.digest.split(':', 1)[0]}:{hasher.hexdigest()}"
            raise DataLoss(f"{what}: received {written} bytes hashing to {actual}; expected "
                           f"{descriptor.size} bytes hashing to {descriptor.digest}")

    async def _receive(self, descriptor: Descriptor, out: BinaryIO, hasher: Any, written: int,
                       on_bytes: Callable[[int], None], what: str,
                       pause: Callable[[], Awaitable[None]] | None) -> tuple[Any, int]:
        """Append the blob's bytes after the `written` already in `out`; (hasher, bytes written).

        An interrupted body is resumed with a Range request from the bytes already
        written (the hasher carries on from there); a registry that ignores Range
        sends the whole blob again and the file starts over.
        """
        if written == descriptor.size:
            return hasher, written  # nothing left to ask for (a Range past the end would be a 416)
        path = f"/v2/{self.repository}/blobs/{descriptor.digest}"
        interruptions = 0
        loop = asyncio.get_running_loop()
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            response = await self._send("GET", path, headers, what)
            try:
                if written and not _resumes_at(response, written):
                    out.seek(0)
                    out.truncate()
                    hasher = new_hasher(descriptor.digest)
                    on_bytes(-written)
                    written = 0
                # Hashing and writing run in a worker thread, a batch behind the network:
                # the event loop only moves bytes, and both cores get used. What was
                # received before an interruption is still written, so the resume is exact.
                sink = _BlobSink(loop, hasher, out)
                try:
                    async for chunk in response.aiter_raw():
                        if pause is not None:
                            await pause()
                        written += len(chunk)
                        if written > descriptor.size:
                            raise DataLoss(f"{what}: more than the {descriptor.size} bytes the manifest says")
                        await sink.add(chunk)
                        on_bytes(len(chunk))
                finally:
                    await sink.flush()
                return hasher, written
            except _BODY_INTERRUPTIONS as exc:
                interruptions += 1
                if interruptions > self._retries:
                    raise _transport_failure(self.host, what, exc) from None
                await self._sleep(_backoff(interruptions))
            finally:
                await response.aclose()

    async def _get_small(self, path: str, headers: dict[str, str], limit: int,
                         what: str) -> tuple[bytes, str]:
        """GET a body of at most `limit` bytes; an interrupted body is fetched again."""
        interruptions = 0
        while True:
            response = await self._send("GET", path, headers, what)
            try:
                return await _read_limited(response, limit, what), response.headers.get("Content-Type", "")
            except _BODY_INTERRUPTIONS as exc:
                interruptions += 1
                if interruptions > self._retries:
                    raise _transport_failure(self.host, what, exc) from None
                await self._sleep(_backoff(interruptions))

    async def _send(self, method: str, path: str, headers: dict[str, str], what: str) -> httpx.Response:
        """Send with retries and auth; return a streaming 2xx response or raise the mapped error."""
        http = self.connection.http
        attempt = 0
        # A 401 to credentials obtained for this very request is the registry's answer; a 401 to a
        # cached token (the registry rotated its key or revoked it) earns one fresh token first.
        sent_fresh = False
        while True:
            try:
                url = await self.connection.base_url() + path
                request_headers = dict(headers)
                if self._authorization:
                    request_headers["Authorization"] = self._authorization
                request = http.build_request(method, url, headers=request_headers)
                response = await http.send(request, stream=True, follow_redirects=True)
            except _TRANSIENT_ERRORS as exc:
                attempt += 1
                if attempt > self._retries or "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise _transport_failure(self.host, what, exc) from None
                await self._sleep(_backoff(attempt))
                continue
            except (httpx.HTTPError, ssl.SSLError) as exc:
                raise _transport_failure(self.host, what, exc) from None
            status = response.status_code
            if status < 300:
                return response
            body = await _read_limited(response, _ERROR_BODY_LIMIT, what, truncate=True)
            if status == 401 and not sent_fresh:
                fresh = await self._authenticate(response.headers.get("WWW-Authenticate", ""))
                if fresh is not None:
                    sent_fresh = fresh
                    continue
            if status in _TRANSIENT_STATUS and attempt < self._retries:
                attempt += 1
                await self._sleep(_retry_after(response, attempt))
                continue
            raise registry_error(status, body, what)

    async def _authenticate(self, header: str) -> bool | None:
        """Prepare the Authorization header a 401's challenge asks for.

        None: we have nothing to offer. True: fresh credentials (a token just fetched, or
        basic credentials), whose refusal is final. False: a token from the cache.
        """
        challenges = {c.scheme: c for c in auth.parse_www_authenticate(header)}
        bearer = challenges.get("bearer")
        if bearer is not None:
            scope = auth.pull_scope(self.repository)
            creds = self._creds if self._creds is not None and not self._creds.registry_token else None
            key = (bearer.params.get("realm", ""), bearer.params.get("service", ""), scope,
                   creds.fingerprint() if creds else "")
            token = self._tokens.get(key)
            if token is not None and self._authorization == f"Bearer {token}":
                # The registry refused the cached token itself: no other pull may use it either.
                self._tokens.drop(key)
                token = None
            if token is None:
                # A realm on the registry's own host (self-hosted registries) is reached with that
                # host's TLS settings from certs.d; others (auth.docker.io) with the system CAs.
                http = self.connection.http if _same_host(key[0], self.host) else self._auth_http
                token, lifetime = await auth.fetch_token(http, bearer, scope, creds,
                                                         allow_plain_http=self.connection.insecure)
                self._tokens.put(key, token, lifetime)
                self._authorization = f"Bearer {token}"
                return True
            self._authorization = f"Bearer {token}"
            return False
        if "basic" in challenges and self._creds is not None and self._creds.username:
            self._authorization = auth.basic_header(self._creds)
            return True
        return None


def _same_host(url: str, host: str) -> bool:
    try:
        return httpx.URL(url).netloc.decode() == host
    except httpx.InvalidURL:
        return False


def _rehash(out: BinaryIO, descriptor: Descriptor) -> tuple[Any, int]:
    """Hash what `out` already holds, leaving its position at the end; more than the blob: start over."""
    hasher = new_hasher(descriptor.digest)
    out.seek(0, 2)
    size = out.tell()
    if size > descriptor.size:
        out.seek(0)
        out.truncate()
        return hasher, 0
    out.seek(0)
    while chunk := out.read(_DOWNLOAD_CHUNK):
        hasher.update(chunk)
    return hasher, size


def _verifies(descriptor: Descriptor, hasher: Any, written: int) -> bool:
    return written == descriptor.size and f"{descriptor.digest.split(':', 1)[0]}:{hasher.hexdigest()}" == \
        descriptor.digest


def _resumes_at(response: httpx.Response, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return response.status_code == 206 and content_range.startswith(f"bytes {offset}-")


async def _read_limited(response: httpx.Response, limit: int, what: str, *, truncate: bool = False) -> bytes:
    """Read a body of at most `limit` bytes: a hostile registry cannot make us allocate without bound.

    Raw bytes: content is verified against digests, so no content-coding may be undone
    (every request says Accept-Encoding: identity, see connections.py).
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise FailedPrecondition(f"{what}: larger than the {limit} bytes allowed")
            chunks.append(chunk)
    except _BODY_INTERRUPTIONS:
        if not truncate:
            raise
    finally:
        await response.aclose()
    return b"".join(chunks)


class _BlobSink:
    """Hashes and writes a download in `_DOWNLOAD_CHUNK` batches on a worker thread, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hasher: Any, out: BinaryIO) -> None:
        self._loop = loop
        self._hasher = hasher
        self._out = out
        self._batch: list[bytes] = []
        self._size = 0
        self._pending: asyncio.Future[None] | None = None

    async def add(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._size += len(chunk)
        if self._size >= _DOWNLOAD_CHUNK:
            await self._submit()

    async def flush(self) -> None:
        if self._batch:
            await self._submit()
        if self._pending is not None:
            await self._pending
            self._pending = None

    async def _submit(self) -> None:
        data = b"".join(self._batch)
        self._batch.clear()
        self._size = 0
        if self._pending is not None:
            await self._pending
        self._pending = self._loop.run_in_executor(None, self._write, data)

    def _write(self, data: bytes) -> None:
        self._hasher.update(data)
        self._out.write(data)
