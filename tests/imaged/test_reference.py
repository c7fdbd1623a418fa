"""Image reference parsing and normalisation (distribution/reference grammar)."""

import pytest

from services.imaged.reference import normalize, parse_reference
from shared.errors import InvalidArgument

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
        ("registry-1.docker.io/user/app", "docker.io/user/app:latest"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1"),
        ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
        ("[::1]:5000/app:x", "[::1]:5000/app:x"),
        (f"quay.io/app@{DIGEST}", f"quay.io/app@{DIGEST}"),
        (f"quay.io/app:v1@{DIGEST}", f"quay.io/app:v1@{DIGEST}"),
        ("a.b/c__d.e-f---g:T_a.g-1", "a.b/c__d.e-f---g:T_a.g-1"),
    ],
)
def test_normalize_qualifies_names_like_docker(text, expected):
    assert str(normalize(text)) == expected


def test_short_name_stays_unqualified_until_placed_in_a_domain():
    ref = parse_reference("busybox:1")
    assert not ref.qualified
    assert ref.name == "busybox"
    assert str(ref.in_domain("quay.io")) == "quay.io/busybox:1"
    assert str(ref.in_domain("docker.io")) == "docker.io/library/busybox:1"


def test_first_component_is_a_domain_only_with_dot_colon_localhost_or_uppercase():
    assert parse_reference("foo/bar").domain == ""
    assert parse_reference("foo.com/bar").domain == "foo.com"
    assert parse_reference("foo:80/bar").domain == "foo:80"
    assert parse_reference("localhost/bar").domain == "localhost"
    assert parse_reference("Foo/bar").domain == "Foo"


def test_tag_and_digest_are_split_off():
    ref = parse_reference(f"host:5000/ns/app:v2@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("host:5000", "ns/app", "v2", DIGEST)
    assert ref.tagged_name == "host:5000/ns/app:v2"
    assert ref.digested_name == f"host:5000/ns/app@{DIGEST}"


def test_port_is_not_mistaken_for_a_tag():
    ref = parse_reference("host:5000/app")
    assert (ref.domain, ref.path, ref.tag) == ("host:5000", "app", "")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "Busybox",
        "docker.io/Library/busybox",
        "busybox:",
        "busybox:-bad",
        "busybox:" + "t" * 129,
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        f"busybox@{DIGEST}@{DIGEST}",
        "a//b",
        "a/b/",
        "-a",
        "a..b/c",
        "host_name.com/app",
        "a" * 64,
        "x/" + "a" * 260,
    ],
)
def test_invalid_references_are_refused(text):
    with pytest.raises(InvalidArgument):
        parse_reference(text)


def test_uppercase_repository_is_refused_with_a_hint():
    with pytest.raises(InvalidArgument, match="lower-case"):
        parse_reference("quay.io/MyApp")


def test_with_name_keeps_tag_and_digest():
    ref = parse_reference(f"a.io/x:1@{DIGEST}")
    moved = ref.with_name("mirror.local:5000/cache/x")
    assert str(moved) == f"mirror.local:5000/cache/x:1@{DIGEST}"


def test_sha512_digests_are_accepted():
    digest = "sha512:" + "b" * 128
    assert parse_reference(f"a.io/x@{digest}").digest == digest
