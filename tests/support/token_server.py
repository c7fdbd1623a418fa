"""A "docker token auth" server for tests, and the registry config that trusts it.

distribution 2.8's `auth: token` accepts an RS256 JWT whose header carries an
``x5c`` chain that verifies against its ``rootcertbundle``. This server mints
such tokens (signed with the openssl CLI, so no crypto library is needed) for
whatever scope is asked, anonymously, on 127.0.0.1. ``rotate()`` replaces the
CA and the signing key and rewrites the bundle; a registry restarted on it then
rejects every token issued before, as a registry that rotated its key does.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Generator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx

from tests.support.registry import OPENSSL_BINARY

SERVICE = "criplex-test-registry"
ISSUER = "criplex-test-token-server"
TOKEN_LIFETIME_S = 3600


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, cwd: Path, stdin: bytes | None = None) -> bytes:
    return subprocess.run([str(OPENSSL_BINARY), *args], check=True, capture_output=True, cwd=cwd,
                          input=stdin).stdout


def parse_scope(scope: str) -> dict[str, object] | None:
    """``repository:name:pull,push`` -> one JWT ``access`` entry (names may contain ':' for ports)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


class TokenServer:
    """Mints registry tokens; ``tokens_issued`` counts what the token endpoint handed out."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="criplex-token-server-"))
        self.bundle = self.workdir / "rootcertbundle.pem"
        self.tokens_issued = 0
        self._lock = threading.Lock()
        self._generation = 0
        self._key = self._leaf_der = self._ca_der = b""
        try:
            self.rotate()
            self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._http.serve_forever, name="token-server", daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/token"

    def registry_auth_config(self) -> dict[str, object]:
        """The ``auth:`` section of a docker-registry config that trusts this server."""
        return {"token": {"realm": self.realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.bundle)}}

    def rotate(self) -> None:
        """A new CA and signing key; the bundle file trusts only the new CA from now on."""
        with self._lock:
            self._generation += 1
            d = self.workdir / f"key{self._generation}"
            d.mkdir()
            rsa = ["-newkey", "rsa:2048", "-nodes"]
            _openssl("req", "-x509", *rsa, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                     "-subj", f"/CN=criplex token CA {self._generation}",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
            (d / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
            _openssl("req", "-new", *rsa, "-keyout", "leaf.key", "-out", "leaf.csr",
                     "-subj", f"/CN=criplex token signer {self._generation}", cwd=d)  # fmt: skip
            _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                     "-days", "2", "-out", "leaf.crt", "-extfile", "leaf.ext", cwd=d)  # fmt: skip
            self._leaf_der = _openssl("x509", "-in", "leaf.crt", "-outform", "DER", cwd=d)
            self._ca_der = _openssl("x509", "-in", "ca.crt", "-outform", "DER", cwd=d)
            self._key = d / "leaf.key"
            shutil.copyfile(d / "ca.crt", self.bundle)

    def mint(self, scopes: list[str]) -> str:
        """A JWT granting `scopes` (``type:name:actions``), signed with the current key."""
        with self._lock:
            header = {"alg": "RS256", "typ": "JWT",
                      "x5c": [base64.b64encode(self._leaf_der).decode(), base64.b64encode(self._ca_der).decode()]}
            key = self._key
        now = int(time.time())
        access = [entry for entry in (parse_scope(s) for s in scopes) if entry is not None]
        claims = {"iss": ISSUER, "sub": "anonymous", "aud": SERVICE, "iat": now, "nbf": now - 10,
                  "exp": now + TOKEN_LIFETIME_S, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = _openssl("dgst", "-sha256", "-sign", str(key), cwd=self.workdir, stdin=signing_input.encode())
        return f"{signing_input}.{_b64url(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path != "/token":
                    self.send_error(404)
                    return
                query = parse_qs(url.query)
                token = server.mint(query.get("scope", []))
                with server._lock:
                    server.tokens_issued += 1
                body = json.dumps({"token": token, "expires_in": TOKEN_LIFETIME_S}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # pytest shows the registry's log when it matters; this one is noise

        return Handler

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BearerFromServer(httpx.Auth):
    """httpx auth for test pushes: answers a registry's bearer challenge with a token minted directly."""

    def __init__(self, server: TokenServer) -> None:
        self._server = server

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        if response.status_code != 401:
            return
        scopes = re.findall(r'scope="([^"]*)"', response.headers.get("WWW-Authenticate", ""))
        # A push needs push and pull on the repository whatever the challenge asked for.
        scopes = [s.rsplit(":", 1)[0] + ":pull,push" for s in scopes]
        request.headers["Authorization"] = f"Bearer {self._server.mint(scopes)}"
        yield request
