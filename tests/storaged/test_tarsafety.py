"""tarsafety: every entry name, kind and sequence a layer could hold, judged without touching a disk."""

from __future__ import annotations

import pytest

from services.storaged.tarsafety import (
    Header,
    Kind,
    LayerPaths,
    Op,
    Step,
    UnsafeEntry,
    kind_of,
    layer_xattrs,
    split_name,
)
from shared.errors import InvalidArgument

F, D, S, H = Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK, Kind.HARDLINK


def plan_all(*headers: Header) -> list[Step]:
    paths = LayerPaths()
    return [paths.plan(h) for h in headers]


def refused(*headers: Header, match: str = "") -> None:
    with pytest.raises(UnsafeEntry, match=match):
        plan_all(*headers)


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "parts"), [
    ("a", ("a",)),
    ("a/b/c", ("a", "b", "c")),
    ("./a/b", ("a", "b")),
    ("a//b/./c/", ("a", "b", "c")),
    ("a/", ("a",)),
    (".", ()),
    ("./", ()),
    ("...", ("...",)),
    ("a/..b/c..", ("a", "..b", "c..")),
    ("a\\..\\b", ("a\\..\\b",)),  # backslashes are ordinary characters on Linux
    ("caf\udce9", ("caf\udce9",)),  # non-UTF-8 bytes survive as surrogates
    ("x" * 255, ("x" * 255,)),
])
def test_split_name_accepts_relative_names(name: str, parts: tuple[str, ...]) -> None:
    assert split_name(name) == parts


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("//a", "absolute"),
    ("..", r"'\.\.'"),
    ("../etc/passwd", r"'\.\.'"),
    ("a/../../etc", r"'\.\.'"),
    ("a/b/..", r"'\.\.'"),
    ("./..", r"'\.\.'"),
    ("a\0b", "NUL"),
    ("a/\0", "NUL"),
    ("x" * 256, "longer than 255"),
    ("a/" + "é" * 128, "longer than 255"),  # 256 bytes in UTF-8
])
def test_split_name_refuses_escapes_and_malformed_names(name: str, why: str) -> None:
    with pytest.raises(UnsafeEntry, match=why):
        split_name(name)


def test_unsafe_entry_is_an_invalid_argument() -> None:
    assert issubclass(UnsafeEntry, InvalidArgument)


# -- types and xattrs --------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "kind"), [
    (b"0", F), (b"\0", F), (b"7", F), (b"S", F), (b"1", H), (b"2", S),
    (b"3", Kind.CHAR_DEVICE), (b"4", Kind.BLOCK_DEVICE), (b"5", D), (b"6", Kind.FIFO),
])
def test_kind_of_maps_tar_type_flags(flag: bytes, kind: Kind) -> None:
    assert kind_of(flag) is kind


@pytest.mark.parametrize("flag", [b"V", b"M", b"D", b"N", b"x", b"g", b"L", b"K", b"Z"])
def test_kind_of_refuses_volume_multivolume_and_unknown_types(flag: bytes) -> None:
    with pytest.raises(UnsafeEntry, match="unsupported"):
        kind_of(flag)


def test_layer_xattrs_returns_schily_records_as_bytes() -> None:
    headers = {
        "SCHILY.xattr.user.comment": "hi",
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff",
        "mtime": "1.5",
        "path": "x",
    }
    assert layer_xattrs(headers) == {"user.comment": b"hi", "security.capability": b"\x01\x00\x00\x02\xff"}


@pytest.mark.parametrize("name", ["trusted.overlay.opaque", "trusted.overlay.redirect",
                                  "trusted.overlay.metacopy", "user.overlay.opaque"])
def test_layer_xattrs_refuses_overlayfs_own_attributes(name: str) -> None:
    with pytest.raises(UnsafeEntry, match="overlayfs"):
        layer_xattrs({f"SCHILY.xattr.{name}": "y"})


@pytest.mark.parametrize("name", ["", "user.a\0b"])
def test_layer_xattrs_refuses_malformed_names(name: str) -> None:
    with pytest.raises(UnsafeEntry, match="malformed"):
        layer_xattrs({f"SCHILY.xattr.{name}": "v"})


# -- plans for ordinary layers -----------------------------------------------------------------


def test_plain_entries_become_create_steps() -> None:
    steps = plan_all(Header("etc/", D), Header("etc/hosts", F), Header("etc/l", S, "../x"),
                     Header("etc/h", H, "etc/hosts"), Header("dev/null", Kind.CHAR_DEVICE, devmajor=1, devminor=3),
                     Header("p", Kind.FIFO), Header("sda", Kind.BLOCK_DEVICE, devmajor=8))
    assert steps == [
        Step(Op.CREATE, ("etc",), D),
        Step(Op.CREATE, ("etc", "hosts"), F),
        Step(Op.CREATE, ("etc", "l"), S),
        Step(Op.CREATE, ("etc", "h"), H, link=("etc", "hosts")),
        Step(Op.CREATE, ("dev", "null"), Kind.CHAR_DEVICE),
        Step(Op.CREATE, ("p",), Kind.FIFO),
        Step(Op.CREATE, ("sda",), Kind.BLOCK_DEVICE),
    ]


def test_root_directory_entry_applies_to_the_layer_root() -> None:
    assert plan_all(Header("./", D)) == [Step(Op.CREATE, (), D)]


@pytest.mark.parametrize("kind", [F, S, Kind.FIFO])
def test_root_entry_that_is_not_a_directory_is_refused(kind: Kind) -> None:
    refused(Header(".", kind, "x"), match="root")


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../etc/shadow", "/", "a/../../b"])
def test_symlinks_may_point_anywhere_as_data(target: str) -> None:
    assert plan_all(Header("l", S, target)) == [Step(Op.CREATE, ("l",), S)]


@pytest.mark.parametrize("target", ["", "a\0b"])
def test_symlink_with_empty_or_nul_target_is_refused(target: str) -> None:
    refused(Header("l", S, target), match="symlink")


def test_a_later_entry_replaces_an_earlier_non_directory() -> None:
    steps = plan_all(Header("a", F), Header("a", S, "x"), Header("a", F), Header("a", Kind.FIFO))
    assert [s.replace for s in steps] == [False, True, True, True]


def test_a_directory_entry_twice_updates_it_in_place() -> None:
    steps = plan_all(Header("d/", D), Header("d/f", F), Header("d", D))
    assert steps[2] == Step(Op.CREATE, ("d",), D, replace=False)


def test_a_non_directory_may_become_a_directory() -> None:
    steps = plan_all(Header("a", F), Header("a", D), Header("a/b", F))
    assert steps[1] == Step(Op.CREATE, ("a",), D, replace=True)


def test_parents_are_created_implicitly() -> None:
    steps = plan_all(Header("a/b/c", F), Header("a/b", D))
    assert steps[1] == Step(Op.CREATE, ("a", "b"), D, replace=False)


# -- writing through links, replacing directories ----------------------------------------------


def test_writing_through_a_symlink_parent_is_refused() -> None:
    refused(Header("etc", S, "/etc"), Header("etc/passwd", F, ), match="through 'etc'.*symlink")


def test_writing_through_a_relative_symlink_parent_is_refused() -> None:
    refused(Header("d/", D), Header("d/up", S, ".."), Header("d/up/x", F), match="through 'd/up'")


def test_writing_below_a_file_is_refused() -> None:
    refused(Header("f", F), Header("f/x", F), match="non-directory")


def test_writing_below_a_device_is_refused() -> None:
    refused(Header("n", Kind.CHAR_DEVICE, devmajor=1, devminor=3), Header("n/x", F), match="non-directory")


def test_replacing_a_directory_with_a_symlink_then_writing_through_it_is_refused() -> None:
    refused(Header("lib/", D), Header("lib", S, "/usr/lib"), Header("lib/evil.so", F),
            match="replace a directory")


@pytest.mark.parametrize("kind", [F, S, Kind.FIFO, Kind.CHAR_DEVICE])
def test_replacing_a_directory_with_a_non_directory_is_refused(kind: Kind) -> None:
    refused(Header("d/", D), Header("d", kind, "x", devmajor=1), match="replace a directory")


def test_replacing_an_implicit_parent_with_a_symlink_is_refused() -> None:
    refused(Header("a/b", F), Header("a", S, "/"), match="replace a directory")


def test_symlink_parent_is_refused_for_whiteouts_too() -> None:
    refused(Header("l", S, "/etc"), Header("l/.wh.passwd", F), match="through 'l'")


def test_symlink_parent_is_refused_for_opaque_markers_too() -> None:
    refused(Header("l", S, "/etc"), Header("l/.wh..wh..opq", F), match="through 'l'")


# -- hard links --------------------------------------------------------------------------------


def test_hardlink_to_an_earlier_file_is_allowed() -> None:
    steps = plan_all(Header("a/f", F), Header("b/g", H, "./a/f"))
    assert steps[1] == Step(Op.CREATE, ("b", "g"), H, link=("a", "f"))


@pytest.mark.parametrize("kind", [S, Kind.CHAR_DEVICE, Kind.FIFO])
def test_hardlink_to_other_non_directories_is_allowed(kind: Kind) -> None:
    steps = plan_all(Header("n", kind, "t", devmajor=1), Header("h", H, "n"))
    assert steps[1].link == ("n",)


def test_hardlink_to_a_hardlink_is_allowed() -> None:
    steps = plan_all(Header("f", F), Header("h1", H, "f"), Header("h2", H, "h1"))
    assert steps[2].link == ("h1",)


@pytest.mark.parametrize(("target", "why"), [
    ("/etc/shadow", "absolute"),
    ("../../etc/shadow", r"'\.\.'"),
    ("etc/shadow", "not an earlier entry"),  # not in this layer (a lower layer's, or the host's)
    ("later", "not an earlier entry"),
    ("", "empty"),
    ("x\0", "NUL"),
])
def test_hardlink_outside_the_layer_is_refused(target: str, why: str) -> None:
    refused(Header("h", H, target), Header("later", F), match=why)


def test_hardlink_through_a_symlink_is_refused() -> None:
    refused(Header("l", S, "/etc"), Header("h", H, "l/shadow"), match="not an earlier entry")


def test_hardlink_to_a_directory_is_refused() -> None:
    refused(Header("d/", D), Header("h", H, "d"), match="directory")


def test_hardlink_to_itself_is_refused() -> None:
    refused(Header("f", F), Header("f", H, "f"), match="itself")


def test_hardlink_to_a_whiteout_is_refused() -> None:
    refused(Header(".wh.x", F), Header("h", H, "x"), match="not an earlier entry")


def test_hardlink_replacing_a_directory_is_refused() -> None:
    refused(Header("f", F), Header("d/", D), Header("d", H, "f"), match="replace a directory")


# -- devices -----------------------------------------------------------------------------------


def test_raw_overlay_whiteout_device_is_refused() -> None:
    refused(Header("x", Kind.CHAR_DEVICE, devmajor=0, devminor=0), match="0:0")


def test_block_device_zero_is_allowed() -> None:
    assert plan_all(Header("b", Kind.BLOCK_DEVICE))[0].kind is Kind.BLOCK_DEVICE


def test_file_replacing_a_device_unlinks_it_first() -> None:
    # Opening the device to write the file would write to the device (e.g. a host disk).
    steps = plan_all(Header("sda", Kind.BLOCK_DEVICE, devmajor=8), Header("sda", F))
    assert steps[1] == Step(Op.CREATE, ("sda",), F, replace=True)


@pytest.mark.parametrize(("uid", "gid"), [(-1, 0), (0, -1), (2**32 - 1, 0), (0, 2**40)])
def test_owner_ids_out_of_range_are_refused(uid: int, gid: int) -> None:
    refused(Header("f", F, uid=uid, gid=gid), match="out of range")


def test_large_valid_owner_ids_are_allowed() -> None:
    assert plan_all(Header("f", F, uid=2**32 - 2, gid=100000))[0].op is Op.CREATE


# -- whiteouts ---------------------------------------------------------------------------------


def test_whiteout_names_become_overlay_whiteouts() -> None:
    assert plan_all(Header("etc/.wh.passwd", F), Header(".wh.tmp", F)) == [
        Step(Op.WHITEOUT, ("etc", "passwd")), Step(Op.WHITEOUT, ("tmp",))]


def test_opaque_marker_marks_its_directory() -> None:
    assert plan_all(Header("var/lib/.wh..wh..opq", F)) == [Step(Op.OPAQUE, ("var", "lib"))]


def test_opaque_marker_at_the_top_marks_the_root() -> None:
    assert plan_all(Header(".wh..wh..opq", F)) == [Step(Op.OPAQUE, ())]


@pytest.mark.parametrize("name", [".wh..wh.plnk", "a/.wh..wh.aufs", ".wh..wh..opqX", ".wh..wh.plnk/1.2",
                                  ".wh..wh.aufs/a/b"])
def test_other_aufs_metadata_is_skipped(name: str) -> None:
    assert plan_all(Header(name, F))[0].op is Op.SKIP


@pytest.mark.parametrize("name", ["a/.wh.", "a/.wh..", ".wh.."])
def test_whiteout_naming_nothing_is_refused(name: str) -> None:
    refused(Header(name, F), match="names no file")


@pytest.mark.parametrize("name", [".wh.a/b", "d/.wh..wh.plnk/x", "d/.wh..wh..opq/x"])
def test_whiteout_name_used_as_a_directory_is_refused(name: str) -> None:
    refused(Header(name, F), match="used as a directory")


def test_whiteout_of_an_earlier_file_of_this_layer_is_skipped() -> None:
    # layer.md: a whiteout only hides lower layers; this layer's own file stays.
    assert plan_all(Header("f", F), Header(".wh.f", F))[1] == Step(Op.SKIP, ("f",))


def test_whiteout_of_an_earlier_directory_of_this_layer_makes_it_opaque() -> None:
    assert plan_all(Header("d/", D), Header(".wh.d", F))[1] == Step(Op.OPAQUE, ("d",))


def test_entry_after_its_whiteout_replaces_it() -> None:
    steps = plan_all(Header(".wh.f", F), Header("f", F))
    assert steps[1] == Step(Op.CREATE, ("f",), F, replace=True)


def test_directory_after_its_whiteout_is_opaque() -> None:
    steps = plan_all(Header(".wh.d", F), Header("d/", D))
    assert steps[1] == Step(Op.CREATE, ("d",), D, replace=True, opaque=True)


def test_writing_below_a_whiteout_is_refused() -> None:
    refused(Header(".wh.d", F), Header("d/x", F), match="whiteout")


def test_duplicate_whiteout_is_skipped() -> None:
    assert plan_all(Header(".wh.x", F), Header(".wh.x", F))[1].op is Op.SKIP


def test_whiteout_entry_type_does_not_matter() -> None:
    assert plan_all(Header(".wh.x", S, "/etc/passwd"))[0] == Step(Op.WHITEOUT, ("x",))
