"""For the admin's tools' tests: a criplex with pods (tests/pods' setup), HTTP over its status socket
as curl speaks it, and the `criplex` command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from services.status_client import status_request
from tests.support.runtime import REPO, CriplexRun


@dataclass(frozen=True)
class Http:
    status: int
    body: str


def http(run: CriplexRun, method: str, target: str) -> Http:
    """One request on the status socket: with curl --unix-socket when installed, else http.client."""
    socket_path = run.run_dir / "status.sock"
    curl = shutil.which("curl")
    if curl is None:
        answer = status_request(socket_path, method, target)
        return Http(answer.status, answer.body)
    out = subprocess.run([curl, "-sS", "--unix-socket", str(socket_path), "-X", method, "-w", "\n%{http_code}",
                          f"http://localhost{target}"], capture_output=True, text=True, timeout=60, check=True)
    body, _, code = out.stdout.rpartition("\n")
    return Http(int(code), body)


def criplex(run: CriplexRun, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "--config", str(run.config_file), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def runc_status(run: CriplexRun, container_id: str, handler: str = "runc") -> str:
    root = Path(run.run_dir) / "runtimes" / handler
    out = subprocess.run(["/usr/sbin/runc", f"--root={root}", "state", container_id], capture_output=True,
                         text=True, timeout=30, check=True)
    return str(json.loads(out.stdout)["status"])
