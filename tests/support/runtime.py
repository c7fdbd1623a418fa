"""Runs a whole criplex (supervisord + five daemons) for a test, in its own directories."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from services.cli import supervisor_env, supervisorctl_argv
from shared import daemon_cgroups
from shared.config import SERVICES, load_config
from shared.cri import api_pb2
from shared.cri.client import CriClient
from shared.errors import ConfigError

# The five of the brief; streamd serves only streams, so the benches leave it out of their sums.
CORE_DAEMONS = tuple(s for s in SERVICES if s != "streamd")

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def unmount_below(base: Path) -> None:
    """Lazily unmount whatever a test left mounted under `base`, deepest first."""
    prefix = str(base).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


class CriplexRun:
    """One criplex under supervisord, with run/state/log dirs under a short temp dir.

    The run dir is short on purpose: nng ipc socket paths must fit in sun_path.
    """

    def __init__(self, extra_toml: str = "", cni_ready: bool = True, cni_conflist: str = "") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cx-", dir="/tmp"))
        self.run_dir = self.base / "run"
        self.state_dir = self.base / "state"
        self.log_dir = self.base / "log"
        self.cni_dir = self.base / "cni"
        self.cni_dir.mkdir()
        if cni_ready:
            (self.cni_dir / "10-test.conflist").write_text(cni_conflist or (
                '{"cniVersion": "1.0.0", "name": "test", "plugins": [{"type": "loopback"}]}'))
        self.config_file = self.base / "criplex.toml"
        self.config_file.write_text(
            f'[paths]\nrun_dir = "{self.run_dir}"\nstate_dir = "{self.state_dir}"\nlog_dir = "{self.log_dir}"\n'
            f'[netd]\ncni_conf_dir = "{self.cni_dir}"\n' + extra_toml
        )
        self.socket = self.run_dir / "criplex.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> CriplexRun:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--config", str(self.config_file), "up"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for(self.ready, timeout, "criplex to report RuntimeReady and NetworkReady")
        return self

    def client(self) -> CriClient:
        return CriClient(str(self.socket))

    def conditions(self) -> dict[str, api_pb2.RuntimeCondition]:
        with self.client() as c:
            status = c.runtime.Status(api_pb2.StatusRequest(), timeout=2)
        return {cond.type: cond for cond in status.status.conditions}

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return all(c.status for c in self.conditions().values())
        except grpc.RpcError:
            return False

    def supervisorctl(self, *args: str) -> str:
        env = supervisor_env(load_config(str(self.config_file)), None)
        out = subprocess.run(supervisorctl_argv(*args), env=env, capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr

    def daemon_pid(self, service: str) -> int:
        out = self.supervisorctl("pid", service).strip()
        return int(out)

    def daemon_pids(self, services: Iterable[str] = CORE_DAEMONS) -> list[int]:
        return [self.daemon_pid(s) for s in services]

    def log(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        unmount_below(self.base)
        self.remove_daemon_cgroups()
        shutil.rmtree(self.base, ignore_errors=True)

    def remove_daemon_cgroups(self) -> bool:
        """The daemons' cgroups, once empty (runs that share a cgroup parent leave the busy ones)."""
        try:
            return daemon_cgroups.remove_all(daemon_cgroups.Hierarchy.detect(), load_config(str(self.config_file)))
        except (OSError, ConfigError):
            return False

    def __enter__(self) -> CriplexRun:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
