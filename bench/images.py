"""Image pulls and ListImages, criplex beside containerd, from the same local registry in the same run."""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench import cri
from bench.containerd import Containerd
from bench.stats import HEADER
from shared.cri import api_pb2
from shared.cri.client import CriClient
from tests.support.images import build_busybox_image
from tests.support.layers import files_layer, random_layer
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import CriplexRun

ROUNDS = 5
LIST_IMAGES = 200


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Samples the summed RSS of some processes every 10 ms while a pull runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in self.pids))
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def pinned(groups: list[tuple[list[int], set[int]]]) -> Iterator[None]:
    """Run each group of processes (every thread of each) on its own CPUs; all CPUs again after.

    Threads started meanwhile inherit their creator's CPUs, so a runtime stays where it was put.
    """
    every = os.sched_getaffinity(0)

    def place(pids: list[int], cpus: set[int]) -> None:
        for pid in pids:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                    os.sched_setaffinity(int(tid), cpus)

    try:
        for pids, cpus in groups:
            place(pids, cpus)
        yield
    finally:
        for pids, _ in groups:
            place(pids, every)


def _pull(socket: str, ref: str, remove: tuple[str, ...]) -> float:
    """Remove `remove` (so no layer of `ref` is left), then time the pull of `ref`."""
    with CriClient(socket) as c:
        for name in remove:
            c.image.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=120)
        time.sleep(0.5)  # let a runtime's asynchronous garbage collection settle
        started = time.perf_counter()
        c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=600)
        return time.perf_counter() - started


def one_core(registry: Registry, ref: str, runtimes: list[tuple[str, str, list[int]]]) -> None:
    """The big pull with the runtime's processes on CPU 0 and the registry and this client on CPU 1.

    A stand-in for a machine whose cores are slower: where the pull is bound by CPU, the
    runtime that spends less of it per byte, and overlaps better, keeps its lead.
    """
    if len(os.sched_getaffinity(0)) < 2:
        return
    print(f"### The big pull, the runtime on one core (median of {ROUNDS})\n")
    print("| runtime | seconds |\n|---|---|")
    for runtime, socket, pids in runtimes:
        with pinned([(pids, {0}), ([registry.pid, os.getpid()], {1})]):
            _pull(socket, ref, (ref,))  # its threads settle on the one core
            times = [_pull(socket, ref, (ref,)) for _ in range(ROUNDS)]
        print(f"| {runtime} | {statistics.median(times):.2f} |")
    print()


def run(criplex_base: CriplexRun) -> None:
    criplex_base.stop()  # this part needs a criplex that knows the bench registry
    registry = Registry()
    conf = Path(registry.workdir) / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    criplex = CriplexRun(extra_toml=f'[imaged]\nregistries_conf = "{conf}"\n').start()
    containerd = Containerd(registry_host=registry.host).start()
    try:
        big = build_busybox_image([random_layer(50 * 1024 * 1024, seed=s) for s in range(4)])
        small = build_busybox_image()
        push(registry, "bench/big:1", big)
        push(registry, "bench/busybox:1", small)
        size_mb = sum(layer.size for layer in big.layers) / 1e6
        print(f"## Pulls after removal (median of {ROUNDS}), registry on 127.0.0.1\n")
        print("| image | runtime | seconds | peak RSS MB |\n|---|---|---|---|")
        daemons = criplex.daemon_pids(("imaged", "storaged"))
        big_ref, small_ref = f"{registry.host}/bench/big:1", f"{registry.host}/bench/busybox:1"
        # Both images share the busybox layer: each pull starts with neither image stored.
        for socket in (str(criplex.socket), str(containerd.socket)):
            _pull(socket, small_ref, (small_ref,))  # warm-up: connections, threads, caches, both runtimes
        for name, ref in ((f"~{size_mb:.0f} MB, 4 incompressible layers + busybox", big_ref),
                          ("busybox", small_ref)):
            for runtime, socket, pids in (("criplex", str(criplex.socket), daemons),
                                          ("containerd", str(containerd.socket), containerd.pids())):
                times, peaks = [], []
                for _ in range(ROUNDS):
                    with PeakRss(pids) as rss:
                        times.append(_pull(socket, ref, (big_ref, small_ref)))
                    peaks.append(rss.peak_kb / 1024)
                extra = " (imaged+storaged)" if runtime == "criplex" else " (containerd)"
                print(f"| {name} | {runtime} | {statistics.median(times):.2f} | {max(peaks):.0f}{extra} |")
        print()
        one_core(registry, big_ref, [("criplex", str(criplex.socket), criplex.daemon_pids()),
                                     ("containerd", str(containerd.socket), containerd.pids())])
        print(f"## ListImages with {LIST_IMAGES} images\n")
        refs = []
        for i in range(LIST_IMAGES):
            image = build_busybox_image([files_layer({"/n": str(i).encode()})])
            push(registry, f"bench/many:{i}", image)
            refs.append(f"{registry.host}/bench/many:{i}")
        for socket in (str(criplex.socket), str(containerd.socket)):
            with CriClient(socket) as c:
                for ref in refs:
                    c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=120)
        print(HEADER)
        for s in cri.run("criplex", str(criplex.socket), ("ListImages",), calls=2000):
            print(s.row())
        for s in cri.run("containerd", str(containerd.socket), ("ListImages",), calls=2000):
            print(s.row())
        print()
    finally:
        containerd.stop()
        criplex.stop()
        registry.stop()
