"""Per-daemon records survive kill -9 at any moment: acknowledged means on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.state import RecordStore, write_all
from tests.support.runtime import REPO


@dataclass(frozen=True)
class Note:
    key: str
    serial: int
    payload: str


# Writes records as fast as it can and prints each key once put() returned.
_WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from shared.state import RecordStore
    from tests.foundation.test_state import Note
    async def main():
        store = RecordStore(Path(sys.argv[1]), Note)
        store.load()
        serial = 0
        while True:
            serial += 1
            key = f"k{serial % 50}"
            await store.put(key, Note(key, serial, "x" * (serial % 5000)))
            print(f"{key} {serial}", flush=True)
    asyncio.run(main())
""")


def test_kill_9_during_writes_loses_no_acknowledged_record(tmp_path):
    # Killed after a different number of acknowledgements each time, so the kill lands at
    # different points of a write.
    for attempt, acks_before_kill in enumerate((1, 7, 40, 150, 400)):
        directory = tmp_path / f"store{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(acks_before_kill)]
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        acknowledged: dict[str, int] = {}
        for line in [*lines, *out.splitlines()]:
            if line.strip():
                key, serial = line.split()
                acknowledged[key] = int(serial)
        assert len(acknowledged) >= min(acks_before_kill, 50), "the writer acknowledged too little"
        store = RecordStore(directory, Note)
        loaded = store.load()
        for key, serial in acknowledged.items():
            # The record is the acknowledged one, or a later write that reached disk
            # before its acknowledgement could be printed.
            assert loaded[key].serial >= serial
            assert loaded[key].payload == "x" * (loaded[key].serial % 5000)
        assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")], "leftovers not cleaned"


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str):
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_write_that_does_not_fit_leaves_the_old_record(tmp_path):
    async def main(directory: Path):
        store = RecordStore(directory, Note)
        store.load()
        await store.put("k", Note("k", 1, "small"))
        good = (directory / "k.json").read_bytes()
        # Larger than the whole filesystem: os.write takes what fits, then the disk is full.
        with pytest.raises(OSError, match="No space left"):
            await store.put("k", Note("k", 2, "x" * 300_000))
        assert (directory / "k.json").read_bytes() == good
        assert store.get("k") == Note("k", 1, "small")
        assert sorted(p.name for p in directory.iterdir()) == ["k.json"], "the cut-short temp file must go"
        assert RecordStore(directory, Note).load() == {"k": Note("k", 1, "small")}

    with tiny_tmpfs(tmp_path / "fs", "64k") as directory:
        asyncio.run(main(directory))


def test_write_all_writes_everything_when_writes_are_cut_short(tmp_path):
    """A signal arriving while a write to a full pipe blocks makes os.write return early."""
    data = os.urandom(4 << 20)
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 4096):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    try:
        write_all(write_fd, data)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    assert bytes(received) == data


def test_unreadable_record_is_set_aside_not_fatal(tmp_path):
    async def main():
        store = RecordStore(tmp_path, Note)
        store.load()
        await store.put("good", Note("good", 1, "ok"))
        (tmp_path / "bad.json").write_text("{not json")
        (tmp_path / "wrong.json").write_text(json.dumps({"key": "w", "serial": "one", "payload": ""}))
        again = RecordStore(tmp_path, Note)
        assert set(again.load()) == {"good"}
        assert (tmp_path / "bad.corrupt").exists() and (tmp_path / "wrong.corrupt").exists()

    asyncio.run(main())
