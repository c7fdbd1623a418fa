"""Image records: lookup by ID, prefix, tag, digest and short name; tag moves; persistence."""

import asyncio

import pytest

from services.imaged.image_store import ImageStore, is_image_id, lookup
from services.imaged.reference import normalize, parse_reference
from services.imaged.registries_conf import RegistriesConf, candidates, parse_registries_conf
from shared.errors import InvalidArgument
from shared.schema.imaged import ImageRecord

ID1 = "sha256:abc1" + "0" * 60
ID2 = "sha256:abc2" + "0" * 60
MANIFEST = "sha256:" + "ee" * 32


def record(image_id=ID1, tags=("docker.io/library/busybox:latest",), digests=(), **kw) -> ImageRecord:
    return ImageRecord(id=image_id, repo_tags=tags, repo_digests=digests, size=1, manifest_digest=MANIFEST,
                       manifest_media_type="m", config_digest=image_id, chain_ids=("sha256:" + "c" * 64,),
                       diff_ids=("sha256:" + "c" * 64,), **kw)


def names(query, conf=None):
    """What the service passes: the names a query may mean, none for an ID that is no reference."""
    try:
        ref = parse_reference(query)
    except InvalidArgument:
        assert is_image_id(query)
        return []
    return candidates(conf or RegistriesConf(), ref)


RECORDS = [
    record(),
    record(ID2, ("quay.io/team/app:v1",), (f"quay.io/team/app@{MANIFEST}",)),
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (ID1, ID1),
        (ID1.removeprefix("sha256:"), ID1),
        ("busybox", ID1),
        ("busybox:latest", ID1),
        ("library/busybox", ID1),
        ("docker.io/library/busybox:latest", ID1),
        ("quay.io/team/app:v1", ID2),
        (f"quay.io/team/app@{MANIFEST}", ID2),
        (f"quay.io/team/app:v9@{MANIFEST}", ID2),
        ("abc2", ID2),
        ("sha256:abc2", ID2),
    ],
)
def test_lookup_forms(query, expected):
    found = lookup(RECORDS, query, names(query))
    assert found is not None and found.id == expected


@pytest.mark.parametrize("query", ["busybox:1", "quay.io/team/app:v2", "alpine", "abc3", "ab"])
def test_lookup_misses(query):
    assert lookup(RECORDS, query, names(query)) is None


def test_name_beats_id_prefix():
    # "abc" is also a valid short name; a tag of that name is what the user means.
    tagged = [*RECORDS, record("sha256:" + "f" * 64, ("docker.io/library/abc:latest",))]
    assert lookup(tagged, "abc", names("abc")).id == "sha256:" + "f" * 64


def test_ambiguous_id_prefix_is_an_error():
    with pytest.raises(InvalidArgument, match="ambiguous"):
        lookup(RECORDS, "abc", names("abc"))


def test_short_name_lookup_follows_search_registries():
    conf = parse_registries_conf('unqualified-search-registries = ["docker.io", "quay.io"]\n', "c")
    assert lookup(RECORDS, "team/app:v1", names("team/app:v1", conf)).id == ID2


def run(coro):
    return asyncio.run(coro)


def test_add_merges_tags_and_moves_a_tag_from_the_old_image(tmp_path):
    store = ImageStore(tmp_path)
    store.load()
    pause = ("registry.k8s.io/pause:3.9",)

    async def scenario():
        await store.add(record(ID1, ("docker.io/library/busybox:latest",)), pause)
        await store.add(record(ID1, ("docker.io/library/busybox:1",)), pause)
        await store.add(record(ID2, ("docker.io/library/busybox:latest",)), pause)

    run(scenario())
    assert store.get(ID1).repo_tags == ("docker.io/library/busybox:1",)
    assert store.get(ID2).repo_tags == ("docker.io/library/busybox:latest",)
    reloaded = ImageStore(tmp_path)
    assert {r.id: r.repo_tags for r in reloaded.load()} == {
        ID1: ("docker.io/library/busybox:1",), ID2: ("docker.io/library/busybox:latest",)}


def test_image_left_without_names_is_kept_dangling(tmp_path):
    store = ImageStore(tmp_path)
    store.load()

    async def scenario():
        await store.add(record(ID1, ("a.io/x:1",)), ())
        await store.add(record(ID2, ("a.io/x:1",)), ())

    run(scenario())
    assert store.get(ID1).repo_tags == ()
    assert store.get(ID2).repo_tags == ("a.io/x:1",)


def test_pinned_follows_the_pause_image_tag(tmp_path):
    store = ImageStore(tmp_path)
    store.load()
    pause_ref = normalize("registry.k8s.io/pause:3.9")
    pause = (pause_ref.tagged_name,)

    async def scenario():
        await store.add(record(ID1, (pause_ref.tagged_name,)), pause)
        assert store.get(ID1).pinned
        await store.add(record(ID2, (pause_ref.tagged_name,)), pause)

    run(scenario())
    assert not store.get(ID1).pinned
    assert store.get(ID2).pinned


def test_delete(tmp_path):
    store = ImageStore(tmp_path)
    store.load()
    run(store.add(record(), ()))
    run(store.delete(ID1))
    assert store.get(ID1) is None
    assert ImageStore(tmp_path).load() == []
