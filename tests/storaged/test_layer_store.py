"""The layer store: idempotent and shared applies, what it refuses, crash recovery, collection."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from services.storaged import layer_store
from services.storaged.layer_store import TMP_PREFIX, TRASH_PREFIX, LayerStore, chain_id_of, unreferenced
from shared.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from shared.schema.storaged import ApplyLayerRequest
from tests.storaged.conftest import hand_over, needs_root, open_store
from tests.storaged.tars import Blob, digest, directory, file, layer, write_big_layer
from tests.storaged.test_unpack import apply

pytestmark = needs_root


def stack(depth: int) -> list[Blob]:
    """`depth` layers, each on the previous one."""
    blobs: list[Blob] = []
    for i in range(depth):
        blobs.append(layer([file(f"layer{i}", str(i).encode())], parent=blobs[-1].chain_id if blobs else ""))
    return blobs


# -- chain ids and garbage collection, pure ----------------------------------------------------


def test_chain_id_of_follows_the_image_spec() -> None:
    a, b = digest(b"a"), digest(b"b")
    assert chain_id_of("", a) == a
    assert chain_id_of(a, b) == digest(f"{a} {b}".encode())


def test_unreferenced_lists_children_before_parents() -> None:
    parents = {"c": "b", "b": "a", "a": ""}
    assert unreferenced(parents, set()) == ["c", "b", "a"]


def test_unreferenced_stops_at_pinned_layers_and_shared_parents() -> None:
    #   a <- b <- c (pinned)
    #        b <- d
    parents = {"a": "", "b": "a", "c": "b", "d": "b"}
    assert unreferenced(parents, {"c"}) == ["d"]
    assert sorted(unreferenced(parents, {"c"}, start=["d"])) == ["d"]
    assert unreferenced(parents, {"b"}) == ["d", "c"] or unreferenced(parents, {"b"}) == ["c", "d"]


def test_unreferenced_from_a_start_walks_up_only_what_it_frees() -> None:
    parents = {"a": "", "b": "a", "x": ""}  # x: an unrelated orphan
    assert unreferenced(parents, set(), start=["b"]) == ["b", "a"]
    assert unreferenced(parents, set(), start=["a"]) == []  # b still sits on a
    assert unreferenced(parents, set(), start=["gone"]) == []


# -- apply -------------------------------------------------------------------------------------


async def test_apply_is_idempotent_and_removes_every_blob(root: Path) -> None:
    store = await open_store(root)
    blob = layer([file("f", b"x")])
    first = await apply(store, blob, "one")
    mtime = store.diff_dir(blob.chain_id).stat().st_mtime_ns
    second = await apply(store, blob, "two")
    assert first == second
    assert store.diff_dir(blob.chain_id).stat().st_mtime_ns == mtime  # not unpacked again
    assert os.listdir(store.incoming_dir) == []


async def test_concurrent_applies_of_one_chain_share_one_unpack(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = layer_store.unpack_blob

    def counting(*args: object) -> object:
        calls.append(str(args[3]))
        time.sleep(0.2)  # keep the first unpack running while the others arrive
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(layer_store, "unpack_blob", counting)
    store = await open_store(root)
    blob = layer([file("f", b"x" * 100_000)])
    results = await asyncio.gather(*(apply(store, blob, f"copy{i}") for i in range(5)))
    assert len(calls) == 1
    assert len(set(results)) == 1
    assert os.listdir(store.incoming_dir) == []
    assert os.listdir(store.layers_dir) == [blob.chain_id.split(":")[1]]


async def test_a_waiting_apply_retries_with_its_own_blob_when_the_shared_one_fails(root: Path) -> None:
    store = await open_store(root)
    good = layer([file("f", b"x" * 200_000)], compression="none")
    bad = Blob(good.data[:-2048] + b"\x01" * 2048, good.diff_id, good.chain_id, "", good.media_type)
    results = await asyncio.gather(apply(store, bad, "bad"), apply(store, good, "good"), return_exceptions=True)
    assert isinstance(results[0], InvalidArgument)  # bytes after the end of the archive
    assert results[1] == store.get(good.chain_id).layer()  # type: ignore[union-attr]


async def test_unpacks_run_off_the_event_loop(root: Path) -> None:
    store = await open_store(root)
    (store.incoming_dir / "big").parent.mkdir(exist_ok=True)
    diff_id, media_type = write_big_layer(store.incoming_dir / "big", files=1500, file_size=128 * 1024,
                                          compression="gzip")
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    await store.apply(ApplyLayerRequest(diff_id, "", diff_id, "big", media_type))
    took = time.monotonic() - started
    ticker.cancel()
    assert took > 0.3  # long enough for the measurement to mean something
    # Blocked, the loop would stall for the whole unpack; shared with a busy thread (the
    # GIL, a loaded machine) it may stall briefly.
    assert max(gaps) < 0.25, max(gaps)


async def test_layers_unpack_concurrently(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    running, peak = 0, 0
    real = layer_store.unpack_blob

    def tracking(*args: object) -> object:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        time.sleep(0.2)
        try:
            return real(*args)  # type: ignore[arg-type]
        finally:
            running -= 1

    monkeypatch.setattr(layer_store, "unpack_blob", tracking)
    store = await open_store(root)
    blobs = [layer([file("f", str(i).encode())]) for i in range(4)]
    await asyncio.gather(*(apply(store, b) for b in blobs))
    assert peak == 4


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", ".", "", "x..y", "nul\0"])
async def test_blob_names_must_be_plain_names_in_incoming(root: Path, name: str) -> None:
    store = await open_store(root)
    blob = layer([file("f")])
    with pytest.raises(InvalidArgument, match="blob name"):
        await store.apply(ApplyLayerRequest(blob.chain_id, "", blob.diff_id, name, blob.media_type))


async def test_a_symlink_in_incoming_is_not_followed(root: Path, canary: Path) -> None:
    store = await open_store(root)
    blob = layer([file("f")])
    (store.incoming_dir / "link").symlink_to(canary / "victim")
    with pytest.raises(InvalidArgument):
        await store.apply(ApplyLayerRequest(blob.chain_id, "", blob.diff_id, "link", blob.media_type))
    assert not (store.incoming_dir / "link").exists()
    assert (canary / "victim").read_text() == "untouched\n"


async def test_a_missing_blob_is_not_found(root: Path) -> None:
    store = await open_store(root)
    blob = layer([file("f")])
    with pytest.raises(NotFound):
        await store.apply(ApplyLayerRequest(blob.chain_id, "", blob.diff_id, "absent", blob.media_type))


async def test_a_chain_id_that_does_not_follow_from_its_parts_is_refused(root: Path) -> None:
    store = await open_store(root)
    base, top = stack(2)
    name = hand_over(store, top)
    with pytest.raises(InvalidArgument, match="does not follow"):
        await store.apply(ApplyLayerRequest(top.diff_id, base.chain_id, top.diff_id, name, top.media_type))
    assert os.listdir(store.incoming_dir) == []


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "0" * 32, "SHA256:" + "0" * 64, ""])
async def test_malformed_digests_are_refused(root: Path, bad: str) -> None:
    store = await open_store(root)
    blob = layer([file("f")])
    name = hand_over(store, blob)
    with pytest.raises(InvalidArgument):
        await store.apply(ApplyLayerRequest(bad, "", bad, name, blob.media_type))


async def test_a_layer_whose_parent_never_arrives_is_refused(root: Path) -> None:
    store = await open_store(root)
    store.parent_wait_s = 0.3
    _, top = stack(2)
    with pytest.raises(FailedPrecondition, match="parent"):
        await apply(store, top)
    assert os.listdir(store.incoming_dir) == [] and os.listdir(store.layers_dir) == []


async def test_a_child_unpacks_before_its_parent_and_commits_after_it(root: Path) -> None:
    store = await open_store(root)
    bottom, top = stack(2)
    child = asyncio.create_task(apply(store, top))
    await asyncio.sleep(0.2)
    assert store.get(top.chain_id) is None  # unpacked, perhaps, but not visible without its parent
    await apply(store, bottom)
    await child
    assert store.get(top.chain_id) is not None and store.get(bottom.chain_id) is not None


async def test_chain_lists_layers_top_first(root: Path) -> None:
    store = await open_store(root)
    blobs = stack(3)
    for b in blobs:
        await apply(store, b)
    assert [r.chain_id for r in store.chain(blobs[2].chain_id)] == [b.chain_id for b in reversed(blobs)]
    with pytest.raises(NotFound):
        store.chain(digest(b"nope"))


# -- crash recovery ----------------------------------------------------------------------------


async def test_load_removes_debris_and_records_without_layers(root: Path) -> None:
    store = await open_store(root)
    a, b, c = stack(3)
    lone = layer([directory("x")])
    for blob in (a, b, c, lone):
        await apply(store, blob)
    layers = store.layers_dir
    (layers / f"{TMP_PREFIX}interrupted" / "diff" / "usr").mkdir(parents=True)
    (layers / f"{TRASH_PREFIX}halfway" / "diff").mkdir(parents=True)
    (layers / ("f" * 64) / "diff").mkdir(parents=True)  # renamed into place, record never written
    (layers / "stray-file").write_text("?")
    os.rename(layers / b.chain_id.split(":")[1], layers / f"{TMP_PREFIX}lost")  # b's dir gone

    fresh = await open_store(root)
    # b lost its dir; c sits on b, so its chain has a hole and goes too; a and lone stay.
    assert sorted(os.listdir(layers)) == sorted([a.chain_id.split(":")[1], lone.chain_id.split(":")[1]])
    assert [fresh.get(x.chain_id) is not None for x in (a, b, c, lone)] == [True, False, False, True]
    assert sorted(p.stem for p in (root / "records" / "layers").iterdir()) == sorted(
        x.chain_id.split(":")[1] for x in (a, lone))


async def test_a_corrupt_record_is_set_aside_and_its_layer_removed(root: Path) -> None:
    store = await open_store(root)
    blob = layer([file("f")])
    await apply(store, blob)
    record = root / "records" / "layers" / f"{blob.chain_id.split(':')[1]}.json"
    record.write_text("{not json")
    fresh = await open_store(root)
    assert fresh.get(blob.chain_id) is None
    assert os.listdir(fresh.layers_dir) == []
    assert record.with_suffix(".corrupt").exists()


async def test_a_record_is_plain_json_with_the_layer_fields(root: Path) -> None:
    store = await open_store(root)
    blob = layer([file("f", b"1234")])
    result = await apply(store, blob)
    data = json.loads((root / "records" / "layers" / f"{blob.chain_id.split(':')[1]}.json").read_text())
    assert data["chain_id"] == blob.chain_id and data["diff_id"] == blob.diff_id
    assert data["size"] == result.size and data["inodes"] == result.inodes == 2


# -- collection --------------------------------------------------------------------------------


async def test_collect_removes_unpinned_layers_children_first(root: Path) -> None:
    store = await open_store(root)
    blobs = stack(3)
    for b in blobs:
        await apply(store, b)
    assert await store.collect({blobs[1].chain_id}) == 1  # only the top; the middle is pinned
    assert store.get(blobs[2].chain_id) is None and store.get(blobs[1].chain_id) is not None
    assert await store.collect(set(), start=[blobs[1].chain_id]) == 2
    await store.purge_trash()
    assert os.listdir(store.layers_dir) == [] and len(store) == 0


async def test_collect_spares_the_parent_of_an_unpack_in_progress(root: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = layer_store.unpack_blob
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(*args: object) -> object:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.3)
        return real(*args)  # type: ignore[arg-type]

    store = await open_store(root)
    base, top = stack(2)
    await apply(store, base)
    monkeypatch.setattr(layer_store, "unpack_blob", slow)
    applying = asyncio.create_task(apply(store, top))
    await started.wait()
    assert await store.collect(set()) == 0  # base is needed by the unpack on top of it
    await applying
    assert await store.collect({top.chain_id}) == 0
    assert store.get(base.chain_id) is not None


async def test_close_stops_an_unpack_and_removes_its_tmp_dir(root: Path) -> None:
    store = await open_store(root)
    diff_id, media_type = write_big_layer(store.incoming_dir / "big", files=2000, file_size=32 * 1024,
                                          compression="none")
    applying = asyncio.create_task(store.apply(ApplyLayerRequest(diff_id, "", diff_id, "big", media_type)))
    while not any(p.name.startswith(TMP_PREFIX) for p in store.layers_dir.iterdir()):
        await asyncio.sleep(0.005)
    await store.close()
    with pytest.raises(Exception, match="stopping"):
        await applying
    assert os.listdir(store.layers_dir) == []


def test_a_fresh_store_loads_empty(root: Path) -> None:
    store = LayerStore(root)
    asyncio.run(store.load())
    assert len(store) == 0 and store.incoming_dir.is_dir() and store.layers_dir.is_dir()


async def test_a_streamed_unpack_whose_caller_is_gone_gives_way_to_the_next_apply(root: Path) -> None:
    """An imaged restart leaves storaged following a download nobody will ever link as
    verified; the new imaged's apply of the same layer must not wait out its stall."""
    store = await open_store(root)
    blob = layer([file(f"f{i}", os.urandom(64 << 10)) for i in range(16)], compression="none")
    (store.incoming_dir / "old.partial").write_bytes(blob.data[: len(blob.data) // 2])
    orphan = asyncio.create_task(store.apply(ApplyLayerRequest(
        blob.chain_id, blob.parent_chain_id, blob.diff_id, "old-verified", blob.media_type,
        growing="old.partial", size=len(blob.data))))
    deadline = time.monotonic() + 20
    while not list(store.layers_dir.glob(f"{TMP_PREFIX}*")):
        assert time.monotonic() < deadline, "the streamed unpack never started"
        await asyncio.sleep(0.01)
    started = time.monotonic()
    stored = await asyncio.wait_for(apply(store, blob, "new"), 20)
    assert stored.chain_id == blob.chain_id
    assert time.monotonic() - started < 10  # nowhere near the 60 s stall
    with pytest.raises(Aborted):
        await orphan
    assert (store.incoming_dir / "old.partial").exists()  # imaged's, for a resume
