"""Debian's containerd with its CRI plugin, on its own socket and directories: the reference runtime."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from shared.cri import api_pb2
from shared.cri.client import CriClient


class Containerd:
    def __init__(self, registry_host: str = "", sandbox_image: str = "registry.k8s.io/pause:3.9",
                 loopback_cni: bool = False, conflist: str = "") -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cxc-", dir="/tmp"))
        self.socket = self.base / "state" / "containerd.sock"
        certs = self.base / "certs.d"
        if registry_host:
            (certs / registry_host).mkdir(parents=True)
            (certs / registry_host / "hosts.toml").write_text(
                f'server = "http://{registry_host}"\n[host."http://{registry_host}"]\n'
                '  capabilities = ["pull", "resolve"]\n')
        cni = self.base / "cni"
        cni.mkdir()
        cni_bin = "/usr/lib/cni"
        if conflist:
            (cni / "10-bench.conflist").write_text(conflist)
        elif loopback_cni:
            cni_bin = str(self._loopback_only_cni(cni))
        self.config = self.base / "config.toml"
        self.config.write_text(f"""version = 2
root = "{self.base}/root"
state = "{self.base}/state"
oom_score = 0
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.base}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def _loopback_only_cni(self, conf_dir: Path) -> Path:
        """A network that costs what criplex's loopback-only one does, and no bridge.

        containerd 1.6 always runs its own loopback network, and then insists that the default
        network report an eth0 ("failed to find network info"). So the default network is a shell
        plugin that reports an eth0 it never makes; its bin dir also links the real loopback plugin.
        """
        bin_dir = self.base / "cni-bin"
        bin_dir.mkdir()
        (bin_dir / "loopback").symlink_to("/usr/lib/cni/loopback")
        plugin = bin_dir / "bench-eth0"
        plugin.write_text(
            '#!/bin/sh\ncase "$CNI_COMMAND" in\n'
            'ADD) printf \'{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"%s"}],'
            '"ips":[{"address":"10.255.0.2/32","interface":0}]}\' "$CNI_NETNS" ;;\n'
            'VERSION) printf \'{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}\' ;;\nesac\n')
        plugin.chmod(0o755)
        (conf_dir / "10-lo.conflist").write_text(
            '{"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "bench-eth0"}]}')
        return bin_dir

    def start(self) -> Containerd:
        log = open(self.base / "containerd.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)], stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.socket.exists():
                try:
                    with CriClient(str(self.socket)) as c:
                        c.runtime.Version(api_pb2.VersionRequest(), timeout=2)
                    return self
                except Exception:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not start; see {self.base}/containerd.log")

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(["umount", "-R", "-l", str(self.base / "root")], capture_output=True, check=False)
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(str(self.base)):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
