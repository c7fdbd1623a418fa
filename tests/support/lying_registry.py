"""A fault-injecting HTTP proxy in front of a real ``Registry``.

Everything is forwarded to the real registry unless a fault is armed for the request:

* ``corrupt_blob``  — serve a blob with one byte flipped (same length, wrong digest);
* ``serve_manifest`` — answer a manifest GET/HEAD with bytes of our choosing (a wrong
  manifest, a schema1 one, a lying ``Docker-Content-Digest``);
* ``fail_blob`` / ``fail_manifest`` — answer the first N GETs with 503 (or any status);
* ``cut_blob`` — send the full ``Content-Length`` then only K bytes, and drop the
  connection, so a client has to resume with ``Range``;
* ``hold_blob`` — send K bytes, then wait until the test releases the rest;
* ``serve_blob`` — answer a blob GET with bytes of our choosing.

Faults apply to GET (and HEAD for ``serve_manifest``); uploads pass through, so
``images.push`` works through the proxy. Every request is recorded in ``requests``
so a test can assert, e.g., that a resume carried ``Range: bytes=K-``.

The client's ``Host`` header is forwarded unchanged and ``X-Forwarded-Proto: http`` is
added: the registry builds absolute upload ``Location`` URLs from them, which therefore
point back at the proxy even when the upstream speaks TLS.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import weakref
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

import httpx

from tests.support.layers import sha256_digest
from tests.support.registry import Registry

# RFC 9110 section 7.6.1 hop-by-hop fields, plus the ones we recompute ourselves.
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "content-length",
    }
)  # fmt: skip
_TARGET = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>blobs|manifests)/(?P<ref>[^/?]+)(?:\?.*)?$")
_COPY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    fault: str | None  # which armed fault answered it, None if forwarded untouched


@dataclass
class _Fault:
    kind: str  # "corrupt" | "fail" | "cut" | "serve" | "hold"
    remaining: int | None  # None: every matching request
    status: int = 503
    after_bytes: int = 0
    retry_after: int | None = None
    body: bytes = b""
    media_type: str = ""
    digest_header: str | None = None
    methods: frozenset[str] = field(default_factory=lambda: frozenset({"GET"}))
    release: threading.Event = field(default_factory=threading.Event)


class LyingRegistry:
    """Proxy on 127.0.0.1:<free port> in front of ``upstream``. Context manager."""

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.requests: list[RecordedRequest] = []
        self._faults: dict[tuple[str, str, str | None], _Fault] = {}
        self._lock = threading.Lock()
        self._server = _ProxyServer(self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"lying-registry-{self.port}", daemon=True
        )
        self._thread.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._server, self._thread)

    # --- addressing -----------------------------------------------------------------

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def client(self, *, auth: bool = True, timeout: float = 30.0) -> httpx.Client:
        """Plain-HTTP client to the proxy carrying the upstream's credentials."""
        credentials = self.upstream.auth
        return httpx.Client(
            base_url=self.url,
            auth=credentials.as_httpx() if (auth and credentials) else None,
            timeout=timeout,
        )

    # --- arming faults ----------------------------------------------------------------

    def _arm(self, kind: str, ref: str, name: str | None, fault: _Fault) -> None:
        with self._lock:
            self._faults[(kind, ref, name)] = fault

    def corrupt_blob(self, digest: str, *, times: int | None = None) -> None:
        """Flip one byte in the middle of every (or the first ``times``) GET of ``digest``."""
        self._arm("blobs", digest, None, _Fault("corrupt", times))

    def fail_blob(self, digest: str, *, times: int = 1, status: int = 503, retry_after: int | None = None) -> None:
        """Answer the first ``times`` GETs of ``digest`` with ``status``, then forward."""
        self._arm("blobs", digest, None, _Fault("fail", times, status=status, retry_after=retry_after))

    def cut_blob(self, digest: str, *, after_bytes: int, times: int = 1) -> None:
        """Promise the whole body, send ``after_bytes`` of it, then drop the connection."""
        self._arm("blobs", digest, None, _Fault("cut", times, after_bytes=after_bytes))

    def hold_blob(self, digest: str, *, after_bytes: int, times: int = 1) -> threading.Event:
        """Send ``after_bytes`` of the blob, then the rest only once the returned event is set
        (or after 120 s, so a failing test never pins a handler thread)."""
        fault = _Fault("hold", times, after_bytes=after_bytes)
        self._arm("blobs", digest, None, fault)
        return fault.release

    def serve_blob(self, digest: str, body: bytes, *, times: int | None = None) -> None:
        """Answer GETs of blob ``digest`` with ``body`` (whatever it hashes to)."""
        self._arm("blobs", digest, None, _Fault("serve", times, body=body, media_type="application/octet-stream",
                                                 digest_header=digest))

    def fail_manifest(
        self, name: str, reference: str, *, times: int = 1, status: int = 503, retry_after: int | None = None
    ) -> None:
        self._arm("manifests", reference, name, _Fault("fail", times, status=status, retry_after=retry_after))

    def serve_manifest(
        self,
        name: str,
        reference: str,
        body: bytes,
        media_type: str,
        *,
        digest_header: str | None = "computed",
        times: int | None = None,
    ) -> None:
        """Answer GET/HEAD of ``name``'s manifest ``reference`` (tag or digest) with ``body``.

        ``Docker-Content-Digest`` is the body's real digest by default; pass another
        digest to lie in the header too, or None to omit it.
        """
        header = sha256_digest(body) if digest_header == "computed" else digest_header
        fault = _Fault(
            "serve", times, body=body, media_type=media_type, digest_header=header,
            methods=frozenset({"GET", "HEAD"}),
        )  # fmt: skip
        self._arm("manifests", reference, name, fault)

    def reset(self) -> None:
        """Disarm every fault and forget recorded requests."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()

    # --- inspection -------------------------------------------------------------------

    def requests_for(self, kind: str, ref: str, method: str = "GET") -> list[RecordedRequest]:
        """Recorded ``method`` requests for a blob digest or manifest reference."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method
                and (m := _TARGET.match(r.path)) is not None
                and m["kind"] == kind
                and m["ref"] == ref
            ]

    # --- called from handler threads ------------------------------------------------------

    def _take_fault(self, method: str, path: str, headers: dict[str, str]) -> _Fault | None:
        """Record the request and consume one use of the fault it hits, if any."""
        fault = None
        target = _TARGET.match(path)
        with self._lock:
            if target is not None:
                kind, ref, name = target["kind"], target["ref"], target["name"]
                key = (kind, ref, None if kind == "blobs" else name)
                armed = self._faults.get(key)
                if armed is not None and method in armed.methods and armed.remaining != 0:
                    fault = armed
                    if armed.remaining is not None:
                        armed.remaining -= 1
            self.requests.append(RecordedRequest(method, path, headers, fault.kind if fault else None))
        return fault

    # --- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        self._finalizer()

    def __enter__(self) -> LyingRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _shutdown(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join()


class _ProxyServer(ThreadingHTTPServer):
    # Handler threads must not keep the test process alive, nor block server_close()
    # on a client that holds a keep-alive connection open.
    daemon_threads = True

    def __init__(self, proxy: LyingRegistry) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real registry
    timeout = 30  # idle keep-alive connections end instead of pinning a thread
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are recorded in LyingRegistry.requests instead

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # --- request side ---------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            # http.server does not decode chunked uploads; httpx sends them for streamed PATCHes.
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.server.proxy._take_fault(self.command, self.path, headers)
        if fault is not None and fault.kind == "fail":
            self._send_error_status(fault)
        elif fault is not None and fault.kind == "serve":
            self._send_served(fault)
        else:
            self._forward(body, fault)

    # --- response side ---------------------------------------------------------------------

    def _send_error_status(self, fault: _Fault) -> None:
        payload = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected by LyingRegistry"}]}).encode()
        self.send_response(fault.status)
        self.send_header("Content-Type", "application/json")
        if fault.retry_after is not None:
            self.send_header("Retry-After", str(fault.retry_after))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_served(self, fault: _Fault) -> None:
        self.send_response(200)
        self.send_header("Content-Type", fault.media_type)
        if fault.digest_header is not None:
            self.send_header("Docker-Content-Digest", fault.digest_header)
        self.send_header("Content-Length", str(len(fault.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(fault.body)

    def _upstream_connection(self) -> http.client.HTTPConnection:
        upstream = self.server.proxy.upstream
        if upstream.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", upstream.port, timeout=30, context=upstream.ssl_context())
        return http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=30)

    def _forward(self, body: bytes, fault: _Fault | None) -> None:
        connection = self._upstream_connection()
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP | {"x-forwarded-proto"}:
                    connection.putheader(name, value)
            # The registry builds absolute Location URLs from Host and this header; without
            # it a TLS upstream would send clients to https://<proxy>, which speaks HTTP.
            connection.putheader("X-Forwarded-Proto", "http")
            if body or self.command in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            self._relay(response, fault)
        except OSError as err:
            self.close_connection = True
            payload = f"upstream: {err}".encode()
            self.send_response(502)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            connection.close()

    def _relay(self, response: http.client.HTTPResponse, fault: _Fault | None) -> None:
        if response.status not in (200, 206):
            fault = None  # an upstream error (e.g. BLOB_UNKNOWN) passes through unharmed
        length_header = response.getheader("Content-Length")
        streaming = fault is None and length_header is not None and self.command != "HEAD"
        payload = b"" if streaming or self.command == "HEAD" else response.read()
        if fault is not None and fault.kind == "corrupt" and payload:
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            # HEAD answers describe the GET body; keep the upstream's length.
            if length_header is not None:
                self.send_header("Content-Length", length_header)
        else:
            self.send_header("Content-Length", length_header if streaming else str(len(payload)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind == "cut":
            self.wfile.write(payload[: fault.after_bytes])
            self.wfile.flush()
            # Abort mid-body: the client sees a short read against Content-Length.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "hold":
            self.wfile.write(payload[: fault.after_bytes])
            self.wfile.flush()
            fault.release.wait(120)
            self.wfile.write(payload[fault.after_bytes :])
            return
        if not streaming:
            self.wfile.write(payload)
            return
        while chunk := response.read(_COPY_CHUNK):
            self.wfile.write(chunk)
