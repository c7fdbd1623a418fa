"""The shared hostile-layer corpus (tests/support/hostile.py) against the real layer store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.errors import InvalidArgument
from tests.storaged.conftest import needs_root, open_store
from tests.storaged.tars import Blob, compress, digest
from tests.storaged.test_unpack import apply, assert_nothing_left

hostile = pytest.importorskip("tests.support.hostile")
pytestmark = needs_root


@pytest.mark.parametrize("case", sorted(hostile.HOSTILE_LAYERS))
async def test_no_layer_of_the_hostile_corpus_touches_the_host(tmp_path: Path, case: str) -> None:
    root = tmp_path / "state"
    canary = hostile.plant_canary(tmp_path / "outside")
    before = hostile.snapshot(canary.parent)
    tar = hostile.HOSTILE_LAYERS[case](canary)
    store = await open_store(root)
    blob = Blob(compress(tar, "gzip"), digest(tar), digest(tar), "", "application/vnd.oci.image.layer.v1.tar+gzip")
    try:
        await apply(store, blob)
    except InvalidArgument:
        assert_nothing_left(store)
    else:
        # Accepted only where the layer's own tree absorbs the trick: a file replacing a symlink.
        assert case in {"symlink_write_through", "relative_symlink_write_through"}
        written = store.diff_dir(blob.chain_id) / "etc" / "evil"
        assert written.read_bytes() == hostile.PAYLOAD and not os.path.islink(written)
    assert hostile.snapshot(canary.parent) == before
