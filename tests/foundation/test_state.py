"""Per-daemon records survive kill -9 at any moment: acknowledged means on disk."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

from shared.state import RecordStore
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
    for attempt in range(5):
        directory = tmp_path / f"store{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.4 + attempt * 0.13)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        acknowledged: dict[str, int] = {}
        for line in out.splitlines():
            key, serial = line.split()
            acknowledged[key] = int(serial)
        assert acknowledged, "the writer acknowledged nothing"
        store = RecordStore(directory, Note)
        loaded = store.load()
        for key, serial in acknowledged.items():
            # The record is the acknowledged one, or a later write that reached disk
            # before its acknowledgement could be printed.
            assert loaded[key].serial >= serial
            assert loaded[key].payload == "x" * (loaded[key].serial % 5000)
        assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")], "leftovers not cleaned"


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
