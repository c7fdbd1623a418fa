"""The command-line side of the status API: HTTP/1.1 over the gateway's `<run_dir>/status.sock`."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from pathlib import Path

from shared.config import Config


def status_socket(config: Config) -> Path:
    return Path(config.paths.run_dir) / "status.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client, dialling a unix socket instead of TCP (the Host header is a placeholder)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class StatusAnswer:
    status: int
    body: str
    content_type: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def status_request(path: Path, method: str, target: str, timeout: float = 30.0) -> StatusAnswer:
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request(method, target)
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        return StatusAnswer(response.status, body, response.getheader("content-type", ""))
    finally:
        conn.close()
