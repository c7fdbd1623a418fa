"""Network readiness and the network pods get: the CNI configuration, watched off the event loop.

The kubelet asks for Status every few seconds and the gateway asks netd's health for it,
so health answers from a cached value. The directory is rescanned in a worker thread
whenever inotify reports a change in it, and every 2 s regardless (it may not exist yet,
or be replaced as a whole, which a watch on it cannot see).

A scan also parses and validates the network (cni_conf.py): an unparsable file, or one
naming a plugin the bin dirs lack, makes NetworkReady false with the reason. The parse
is what the next pod's ADD uses, so a pod's path never reads the directory; a changed
config applies to the pods made after the watch saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from services.netd.cni_conf import ConfigInvalid, NetworkConfig, config_files, load_network
from shared.daemon import Readiness
from shared.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    add_watch,
    drain,
    inotify_open,
)

RESCAN_SECONDS = 2.0

# What a change of the directory's contents, or of the directory itself, looks like.
_IN_CHANGES = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
               | IN_MOVE_SELF)


def scan(conf_dir: Path, bin_dirs: tuple[str, ...], wanted: str = "") -> tuple[Readiness, NetworkConfig | None]:
    # The kubelet reports the node NotReady until a usable CNI network is configured.
    try:
        network = load_network(conf_dir, bin_dirs, wanted)
    except ConfigInvalid as exc:
        reason = "InvalidCNIConfig" if config_files(conf_dir) else "NetworkPluginNotReady"
        return Readiness(False, reason, exc.message), None
    info = {"cni_config": Path(network.source).name, "cni_network": network.name}
    return Readiness(True, info=info), network


class CniConfigWatch:
    """Keeps `current` (readiness) and `network` up to date with the CNI configuration while `run()` runs."""

    def __init__(self, conf_dir: Path, bin_dirs: tuple[str, ...] = (), wanted: str = "") -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.wanted = wanted
        # Once here, before serving, so the first health call already has an answer.
        self.current, self.network = scan(conf_dir, bin_dirs, wanted)

    def usable_network(self) -> NetworkConfig:
        """The network the next pod gets; FailedPrecondition, saying why, while there is none."""
        if self.network is None:
            raise ConfigInvalid(f"network not ready: {self.current.message}")
        return self.network

    async def run(self) -> None:
        fd = inotify_open()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        loop.add_reader(fd, changed.set)
        try:
            while True:
                # Re-adding is a no-op on a watched directory and follows one that was
                # created or replaced since; a missing directory is simply not watched.
                with contextlib.suppress(OSError):
                    add_watch(fd, self.conf_dir, _IN_CHANGES)
                changed.clear()
                self.current, self.network = await asyncio.to_thread(scan, self.conf_dir, self.bin_dirs,
                                                                     self.wanted)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RESCAN_SECONDS):
                        await changed.wait()
                drain(fd)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
