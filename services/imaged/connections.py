"""One pooled HTTP client per registry host, with that host's TLS settings.

TLS follows containers-certs.d(5): the system CAs plus every `*.crt` in
`<certs_dir>/<host[:port]>/`, and a client certificate from each `X.cert` +
`X.key` pair there. `insecure` (registries.conf) means: skip certificate
verification, and fall back to plain HTTP when the host does not speak TLS.

httpx's clients are per TLS context, so a host's client is rebuilt when its
certs.d directory changes; the old one is closed at shutdown, not mid-pull.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpcore
import httpx

from shared.errors import FailedPrecondition

log = logging.getLogger(__name__)

# httpcore reads an HTTP/1.1 body 64 KiB at a time, and every read is a trip through h11,
# httpcore and httpx in Python: ~3,300 of them per 200 MB of layers. Reads of up to 1 MiB
# (a socket read returns what has arrived, so small bodies are not held back) cut imaged's
# CPU per such pull by a quarter (0.51 -> 0.38 s here). httpcore offers no per-client
# setting; imaged is the one user of httpx in its process.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 1 << 20

_TIMEOUT = httpx.Timeout(connect=30.0, read=60.0, write=60.0, pool=60.0)
_LIMITS = httpx.Limits(max_connections=32, max_keepalive_connections=8)
USER_AGENT = "criplex-imaged/0.1"
# Bodies are hashed as received, so no content-coding may be applied on the way.
_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}


def certs_signature(directory: Path) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file()))
    except OSError:
        return ()


def ssl_context(directory: Path, insecure: bool) -> ssl.SSLContext:
    """The TLS context for one host: system CAs, certs.d additions, or no verification if insecure."""
    if insecure:
        # No verification, so no CA store to load (which takes ~40 ms): client certificates only.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context()
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ctx
    for entry in entries:
        if entry.suffix == ".crt" and not insecure:
            ctx.load_verify_locations(cafile=str(entry))
        elif entry.suffix == ".cert":
            key = entry.with_suffix(".key")
            if not key.is_file():
                raise ValueError(f"{entry}: client certificate without its key {key.name}")
            ctx.load_cert_chain(str(entry), str(key))
    return ctx


@dataclass
class Connection:
    """How to reach one registry host: its client and, once known, its URL scheme."""

    host: str
    insecure: bool
    http: httpx.AsyncClient
    scheme: str = ""  # "https" or "http"; "" until probed (insecure hosts only)
    tls: ssl.SSLContext | None = None  # what `http` was built with

    async def base_url(self) -> str:
        if not self.scheme:
            self.scheme = await self._probe() if self.insecure else "https"
        return f"{self.scheme}://{self.host}"

    async def _probe(self) -> str:
        # containers/image's order for insecure registries: HTTPS without verification, then HTTP.
        try:
            await self.http.get(f"https://{self.host}/v2/")
            return "https"
        except ssl.SSLError:
            return "https"  # a TLS alert (a client certificate wanted, say): the host speaks TLS
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            reason = str(exc) or type(exc).__name__
        except httpx.ConnectError as exc:
            # Refused on an explicit port says nothing about TLS (HTTP would be refused too):
            # let the caller retry rather than remember a scheme. Without a port, HTTPS is 443
            # and HTTP is 80, so a refused 443 is a reason to try 80.
            if _has_port(self.host) and not _is_tls_failure(exc):
                raise
            reason = str(exc) or type(exc).__name__
        log.info("registry %s: HTTPS failed (%s); using plain HTTP, allowed as it is insecure", self.host, reason)
        return "http"


def _has_port(host: str) -> bool:
    return ":" in host.rsplit("]", 1)[-1]


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc)


class ConnectionPool:
    def __init__(self, certs_dir: Path, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._certs_dir = certs_dir
        # Tests inject a transport; then TLS settings do not apply.
        self._transport = transport
        self._connections: dict[tuple[str, bool], tuple[tuple[tuple[str, int], ...], Connection]] = {}
        self._retired: list[httpx.AsyncClient] = []
        self._auth_http: httpx.AsyncClient | None = None
        self._system: ssl.SSLContext | None = None

    @property
    def system_context(self) -> ssl.SSLContext:
        """The system CAs alone, shared by every host with no certs.d files of its own.

        Loading the CA store takes ~40 ms of CPU with the GIL held, so it is done once (the
        daemon does it before it serves), not on the event loop at a host's first pull.
        """
        if self._system is None:
            self._system = ssl.create_default_context()
        return self._system

    def _client(self, verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=verify, timeout=_TIMEOUT, limits=_LIMITS, transport=self._transport,
                                 headers=_HEADERS, follow_redirects=False)

    def get(self, host: str, insecure: bool) -> Connection:
        directory = self._certs_dir / host
        signature = certs_signature(directory)
        cached = self._connections.get((host, insecure))
        if cached is not None and cached[0] == signature:
            return cached[1]
        try:
            context = ssl_context(directory, insecure) if insecure or signature else self.system_context
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise FailedPrecondition(f"TLS configuration in {directory} is unusable: {exc}") from None
        if cached is not None:
            self._retired.append(cached[1].http)
        conn = Connection(host, insecure, self._client(context), tls=context)
        self._connections[(host, insecure)] = (signature, conn)
        return conn

    @property
    def auth_http(self) -> httpx.AsyncClient:
        """For token endpoints, which live on other hosts (auth.docker.io): system CAs only."""
        if self._auth_http is None:
            self._auth_http = self._client(self.system_context)
        return self._auth_http

    async def aclose(self) -> None:
        clients = [c.http for _, c in self._connections.values()] + self._retired
        if self._auth_http is not None:
            clients.append(self._auth_http)
        for client in clients:
            await client.aclose()
        self._connections.clear()
        self._retired.clear()
        self._auth_http = None
