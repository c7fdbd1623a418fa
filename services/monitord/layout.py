"""Where monitord keeps things on disk, and why each place survives (or not) a reboot.

- `<state_dir>/{sandboxes,containers}/`: the records (see shared/state.py).
- `<state_dir>/persist/<cid>/`: conmon's --persist-dir. It holds the `exit` and `oom` files
  and, being on persistent storage, tells after a reboot how a container ended.
- `<run_dir>/monitord/bundles/<cid>/`: the OCI bundle (config.json, pidfiles, conmon's ctl
  FIFO). On tmpfs: meaningless once the containers are gone with the reboot.
- `<run_dir>/monitord/exits/`: conmon's --exit-dir, watched with inotify.
- `<run_dir>/monitord/s/`: conmon's --socket-dir-path (attach sockets). Kept short: the
  attach socket path `<dir>/<64-hex cuuid>/attach` must fit in sun_path (107 bytes).
- `<run_dir>/monitord/sandboxes/<sid>/`: a pod's pinned IPC/UTS namespaces, its /dev/shm
  tmpfs, hostname, hosts and resolv.conf.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    state_dir: Path
    run_dir: Path  # <paths.run_dir>/monitord

    @property
    def sandbox_records(self) -> Path:
        return self.state_dir / "sandboxes"

    @property
    def container_records(self) -> Path:
        return self.state_dir / "containers"

    @property
    def exits(self) -> Path:
        return self.run_dir / "exits"

    @property
    def sockets(self) -> Path:
        return self.run_dir / "s"

    def persist(self, container_id: str) -> Path:
        return self.state_dir / "persist" / container_id

    def bundle(self, container_id: str) -> Path:
        return self.run_dir / "bundles" / container_id

    def exit_file(self, container_id: str) -> Path:
        return self.exits / container_id

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.run_dir / "sandboxes" / sandbox_id

    def ensure(self) -> None:
        for directory in (self.state_dir / "persist", self.run_dir / "bundles", self.exits, self.sockets,
                          self.run_dir / "sandboxes"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
