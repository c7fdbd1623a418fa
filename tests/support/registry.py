"""A real OCI distribution registry (Debian's docker-registry, distribution v2.8) for tests.

Each ``Registry`` is one ``docker-registry serve`` process on 127.0.0.1 with its own
filesystem storage in a private temp dir. Optional htpasswd basic auth and TLS
(a throwaway CA plus a server certificate, optionally client certificates for a
certs.d mTLS test). ``stop()`` kills the process by PID and removes the temp dir;
a ``weakref.finalize`` does the same if a test forgets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
HTPASSWD_BINARY = Path("/usr/bin/htpasswd")
OPENSSL_BINARY = Path("/usr/bin/openssl")

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str

    def as_httpx(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self.username, self.password)


@dataclass(frozen=True)
class TLSMaterial:
    """PEM files of a throwaway PKI: one CA signs the server and (optionally) a client."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None = None
    client_key: Path | None = None


def free_port() -> int:
    """A port free right now on 127.0.0.1; the caller retries if someone takes it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_htpasswd(path: Path, auth: BasicAuth) -> Path:
    """Write a bcrypt htpasswd file; distribution's htpasswd auth only accepts bcrypt.

    ``-C 4`` is bcrypt's minimum cost: the registry verifies the hash on every request,
    and the default cost would make each authenticated request needlessly slow.
    """
    out = subprocess.run(
        [str(HTPASSWD_BINARY), "-Bbn", "-C", "4", auth.username, auth.password],
        check=True,
        capture_output=True,
        text=True,
    )
    path.write_text(out.stdout.strip() + "\n")
    return path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([str(OPENSSL_BINARY), *args], check=True, capture_output=True, cwd=cwd)


def make_tls_material(directory: Path, *, with_client_cert: bool = False) -> TLSMaterial:
    """A CA plus a leaf for 127.0.0.1/localhost, signed by that CA.

    A separate CA (rather than a lone self-signed leaf) keeps the chain valid under
    strict X.509 verification (Python >= 3.13 turns VERIFY_X509_STRICT on; Go checks
    basicConstraints), and it is the shape certs.d expects: ``ca.crt`` is a CA.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=criplex test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip

    def leaf(stem: str, subject: str, extensions: str) -> None:
        (directory / f"{stem}.ext").write_text(extensions)
        _openssl("req", "-new", *ec, "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", subject,
                 cwd=directory)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{stem}.crt", "-extfile", f"{stem}.ext",
            cwd=directory,
        )  # fmt: skip

    leaf(
        "server",
        "/CN=127.0.0.1",
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n",
    )
    client_cert = client_key = None
    if with_client_cert:
        leaf(
            "client",
            "/CN=criplex test client",
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n"
            "authorityKeyIdentifier=keyid\n",
        )
        client_cert, client_key = directory / "client.crt", directory / "client.key"
    return TLSMaterial(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=client_cert,
        client_key=client_key,
    )


def _kill_and_clean(proc: subprocess.Popen[bytes], workdir: Path | None) -> None:
    """Stop one registry process by its PID and remove its temp dir; idempotent."""
    if proc.poll() is None:
        # SIGTERM first: with draintimeout unset the registry exits at once.
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class RegistryStartError(RuntimeError):
    pass


class Registry:
    """One running docker-registry. Use as a context manager or call ``stop()``."""

    def __init__(
        self,
        *,
        auth: BasicAuth | None = None,
        tls: bool = False,
        client_cert_required: bool = False,
        schema1: bool = False,
        relative_urls: bool = False,
        auth_config: dict[str, object] | None = None,
        client_auth: httpx.Auth | None = None,
    ) -> None:
        if not REGISTRY_BINARY.exists():
            raise RegistryStartError(f"{REGISTRY_BINARY} missing: apt-get install docker-registry")
        self.auth = auth
        # Another `auth:` section (token auth) and how test clients then authenticate.
        self._auth_config = auth_config
        self._client_auth = client_auth
        self.workdir = Path(tempfile.mkdtemp(prefix="criplex-registry-"))
        self.storage = self.workdir / "storage"
        self.storage.mkdir()
        self.log_path = self.workdir / "registry.log"
        self.tls: TLSMaterial | None = None
        self._client_cert_required = client_cert_required
        self._schema1 = schema1
        self._relative_urls = relative_urls
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        try:
            if tls or client_cert_required:
                self.tls = make_tls_material(self.workdir / "pki", with_client_cert=client_cert_required)
            self._start_on_a_free_port()
        except BaseException:
            # Also on KeyboardInterrupt mid-start: no orphan process, no stray temp dir.
            if self._finalizer is not None:
                self._finalizer()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        # Started: from now on the safety-net finalizer also owns the temp dir.
        assert self._finalizer is not None and self._proc is not None
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _kill_and_clean, self._proc, self.workdir)

    def _start_on_a_free_port(self) -> None:
        # The port is picked before the registry binds it, so another process can take it
        # in between; retry with a new port rather than fail the test run.
        last_error: Exception | None = None
        for _ in range(3):
            self.port = free_port()
            try:
                self._start()
                return
            except RegistryStartError as err:
                last_error = err
        raise RegistryStartError(str(last_error))

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` — the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _config(self) -> dict[str, object]:
        http: dict[str, object] = {
            "addr": self.host,
            "relativeurls": self._relative_urls,
            # The registry would otherwise generate a random secret per start; a fixed one
            # keeps upload-state tokens stable in logs when debugging.
            "secret": "criplex-test-secret",
        }
        if self.tls is not None:
            tls: dict[str, object] = {
                "certificate": str(self.tls.server_cert),
                "key": str(self.tls.server_key),
            }
            if self._client_cert_required:
                tls["clientcas"] = [str(self.tls.ca_cert)]
            http["tls"] = tls
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                # The purger would wake up in a goroutine for nothing in a test's lifetime.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.auth is not None:
            htpasswd = make_htpasswd(self.workdir / "htpasswd", self.auth)
            config["auth"] = {"htpasswd": {"realm": "criplex-test", "path": str(htpasswd)}}
        if self._auth_config is not None:
            config["auth"] = self._auth_config
        if self._schema1:
            config["compatibility"] = {"schema1": {"enabled": True}}
        return config

    def _start(self) -> None:
        config_path = self.workdir / "config.yml"
        # JSON is valid YAML, and the registry parses config.yml with a YAML parser,
        # so no YAML library is needed.
        config_path.write_text(json.dumps(self._config(), indent=2))
        # REGISTRY_* variables override config.yml; never let the caller's env leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                # Own session: a Ctrl-C on the test run reaches pytest, whose finalizers
                # then stop the registry in order, instead of racing it.
                start_new_session=True,
            )
        # Cleanup is registered before we wait, so a failed start still gets reaped.
        self._finalizer = weakref.finalize(self, _kill_and_clean, self._proc, None)
        try:
            self._wait_ready()
        except RegistryStartError:
            self._finalizer()
            raise

    def restart(self) -> None:
        """Stop the process and start it again on the same port and storage, re-reading its config files."""
        assert self._proc is not None and self._finalizer is not None
        self._finalizer.detach()
        _kill_and_clean(self._proc, None)
        try:
            self._start()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        assert self._finalizer is not None and self._proc is not None
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _kill_and_clean, self._proc, self.workdir)

    def _wait_ready(self) -> None:
        """Poll GET /v2/ until it answers: 200 anonymous, 401 when auth is on."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryStartError(f"docker-registry exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with self.client(auth=False) as client:
                    response = client.get("/v2/", timeout=1.0)
                if response.status_code in (200, 401):
                    return
            except (httpx.TransportError, OSError):
                pass
            time.sleep(0.05)
        raise RegistryStartError(f"docker-registry did not answer /v2/ in {START_TIMEOUT_S}s")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def ssl_context(self) -> ssl.SSLContext:
        """Trust for this registry (its CA, or the system store) plus our client cert if any."""
        if self.tls is None:
            return ssl.create_default_context()
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        if self.tls.client_cert is not None and self.tls.client_key is not None:
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def client(self, *, auth: bool = True, timeout: float = 30.0) -> httpx.Client:
        """An httpx client for this registry: base URL, CA trust, client cert, credentials."""
        return httpx.Client(
            base_url=self.url,
            auth=(self._client_auth or (self.auth.as_httpx() if self.auth else None)) if auth else None,
            verify=self.ssl_context(),
            timeout=timeout,
        )

    def write_certs_d(self, certs_d: Path) -> Path:
        """Lay out ``certs_d/<host:port>/`` as containerd/CRI-O expect; return that dir.

        ``ca.crt`` trusts the registry; ``client.cert``/``client.key`` (if the registry
        requires a client certificate) authenticate us to it.
        """
        if self.tls is None:
            raise ValueError("registry was started without TLS")
        host_dir = certs_d / self.host
        host_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.tls.ca_cert, host_dir / "ca.crt")
        if self.tls.client_cert is not None and self.tls.client_key is not None:
            shutil.copyfile(self.tls.client_cert, host_dir / "client.cert")
            shutil.copyfile(self.tls.client_key, host_dir / "client.key")
        return host_dir

    def stop(self) -> None:
        """Kill the registry by PID, wait for it, and remove its temp dir."""
        if self._finalizer is not None:
            self._finalizer()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Registry(url={self.url!r}, auth={self.auth is not None}, pid={self._proc and self._proc.pid})"
