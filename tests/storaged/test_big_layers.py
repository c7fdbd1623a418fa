"""Big layers: memory stays flat while streaming, and a kill -9 mid-unpack leaves nothing visible."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.storaged.layer_store import TMP_PREFIX
from tests.storaged.conftest import needs_root, open_store
from tests.storaged.tars import Compression, write_big_layer

pytestmark = needs_root

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def child(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.storaged.apply_child", str(root), *args],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)


def report(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0
    return json.loads(out)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_200_mib_layer_unpacks_with_flat_memory(root: Path, compression: Compression) -> None:
    (root / "incoming").mkdir(parents=True)
    diff_id, media_type = write_big_layer(root / "incoming" / "big", files=4, file_size=50 * MiB,
                                          compression=compression)
    assert (root / "incoming" / "big").stat().st_size > 180 * MiB  # really 200 MiB of work
    baseline = report(child(root))["peak_rss_bytes"]
    result = report(child(root, "big", diff_id, diff_id, media_type))
    assert result["size"] >= 200 * MiB
    # Buffering the layer (or one of its 50 MiB files) would show here.
    assert result["peak_rss_bytes"] - baseline < 24 * MiB, (baseline, result)


def test_kill_9_during_an_unpack_leaves_no_visible_layer(root: Path) -> None:
    (root / "incoming").mkdir(parents=True)
    diff_id, media_type = write_big_layer(root / "incoming" / "big", files=3000, file_size=64 * 1024,
                                          compression="zstd")
    proc = child(root, "big", diff_id, diff_id, media_type)
    layers = root / "layers"
    deadline = time.monotonic() + 60
    try:
        while True:  # kill it once it has written a good part of the layer
            tmp = list(layers.glob(f"{TMP_PREFIX}*")) if layers.exists() else []
            if tmp and (tmp[0] / "diff" / "data").is_dir() and len(os.listdir(tmp[0] / "diff" / "data")) > 300:
                break
            assert proc.poll() is None, "the unpack finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [p.name for p in layers.iterdir()] == [tmp[0].name]  # the partial unpack, under its tmp name

    async def restart() -> None:
        store = await open_store(root)
        assert list(layers.iterdir()) == []
        assert store.get(diff_id) is None and len(store) == 0

    asyncio.run(restart())
