"""Applies one layer in a process of its own and reports its peak RSS (for the memory and kill -9 tests).

python -m tests.storaged.apply_child ROOT [BLOB CHAIN_ID DIFF_ID MEDIA_TYPE]
Without a blob it only loads the store: the baseline to compare the peak against.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path

from services.storaged.layer_store import LayerStore
from shared.schema.storaged import ApplyLayerRequest


async def main(argv: list[str]) -> None:
    store = LayerStore(Path(argv[0]))
    await store.load()
    size = 0
    if len(argv) > 1:
        blob, chain_id, diff_id, media_type = argv[1:5]
        layer = await store.apply(ApplyLayerRequest(chain_id, "", diff_id, blob, media_type))
        size = layer.size
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_bytes": peak_kib * 1024, "size": size}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
