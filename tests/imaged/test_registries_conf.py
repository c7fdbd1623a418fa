"""registries.conf v2: prefixes, rewrites, mirrors, blocked, insecure, short names, drop-ins."""

import pytest

from services.imaged.reference import normalize, parse_reference
from services.imaged.registries_conf import (
    RegistriesConf,
    candidates,
    find_registry,
    match_length,
    parse_registries_conf,
    pull_sources,
)
from shared.errors import ConfigError, PermissionDenied

DIGEST = "sha256:" + "c" * 64


def conf(text: str) -> RegistriesConf:
    return parse_registries_conf(text, "test.conf")


def sources(c: RegistriesConf, image: str) -> list[tuple[str, bool, bool]]:
    return [(str(s.reference), s.insecure, s.mirror) for s in pull_sources(c, normalize(image))]


def test_unmatched_name_is_pulled_from_where_it_says():
    assert sources(RegistriesConf(), "quay.io/app:1") == [("quay.io/app:1", False, False)]


def test_location_rewrites_the_matched_prefix_for_the_harness_mapping():
    c = conf('[[registry]]\nprefix = "registry.k8s.io"\nlocation = "127.0.0.1:5000"\ninsecure = true\n')
    assert sources(c, "registry.k8s.io/pause:3.9") == [("127.0.0.1:5000/pause:3.9", True, False)]


def test_namespace_prefix_rewrites_only_below_it():
    c = conf('[[registry]]\nprefix = "example.com/foo"\nlocation = "internal:5000/mirror/foo"\n')
    assert sources(c, "example.com/foo/bar:1") == [("internal:5000/mirror/foo/bar:1", False, False)]
    assert sources(c, "example.com/foobar:1") == [("example.com/foobar:1", False, False)]


def test_longest_prefix_wins():
    c = conf(
        '[[registry]]\nlocation = "example.com"\ninsecure = true\n'
        '[[registry]]\nprefix = "example.com/team"\nlocation = "team.example.net"\n'
    )
    assert find_registry(c, "example.com/team/app").location == "team.example.net"
    assert find_registry(c, "example.com/other/app").location == "example.com"
    assert find_registry(c, "other.com/app") is None


def test_prefix_does_not_match_another_port_of_the_same_host():
    assert match_length("example.com:5000/app", "example.com") == -1
    assert match_length("example.com/app", "example.com") == len("example.com")


def test_wildcard_prefix_matches_subdomains_only():
    c = conf('[[registry]]\nprefix = "*.example.com"\nblocked = true\n')
    with pytest.raises(PermissionDenied, match="blocked"):
        pull_sources(c, normalize("a.b.example.com/app"))
    with pytest.raises(PermissionDenied):
        pull_sources(c, normalize("a.example.com:5000/app"))
    assert sources(c, "example.com/app") == [("example.com/app:latest", False, False)]
    assert sources(c, "notexample.com/app") == [("notexample.com/app:latest", False, False)]


def test_exact_prefix_beats_a_shorter_wildcard():
    c = conf(
        '[[registry]]\nprefix = "*.example.com"\ninsecure = true\n'
        '[[registry]]\nprefix = "reg.example.com/app"\nlocation = "reg.example.com/app"\n'
    )
    assert sources(c, "reg.example.com/app:1") == [("reg.example.com/app:1", False, False)]
    assert sources(c, "reg.example.com/other:1") == [("reg.example.com/other:1", True, False)]


def test_wildcard_mirror_replaces_the_matched_host():
    c = conf('[[registry]]\nprefix = "*.example.com"\n[[registry.mirror]]\nlocation = "cache.local"\n')
    assert sources(c, "a.example.com/ns/app:1") == [
        ("cache.local/ns/app:1", False, True),
        ("a.example.com/ns/app:1", False, False),
    ]


def test_mirrors_come_first_in_order_each_with_its_own_insecure():
    c = conf(
        '[[registry]]\nlocation = "docker.io"\n'
        '[[registry.mirror]]\nlocation = "m1.local:5000"\ninsecure = true\n'
        '[[registry.mirror]]\nlocation = "m2.local/hub"\n'
    )
    assert sources(c, "busybox") == [
        ("m1.local:5000/library/busybox:latest", True, True),
        ("m2.local/hub/library/busybox:latest", False, True),
        ("docker.io/library/busybox:latest", False, False),
    ]


def test_mirror_by_digest_only_skips_mirrors_for_tags():
    c = conf(
        '[[registry]]\nlocation = "quay.io"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "m.local"\n'
    )
    assert [m for _, _, m in sources(c, "quay.io/app:1")] == [False]
    assert [m for _, _, m in sources(c, f"quay.io/app@{DIGEST}")] == [True, False]


def test_pull_from_mirror_per_mirror():
    c = conf(
        '[[registry]]\nlocation = "quay.io"\n'
        '[[registry.mirror]]\nlocation = "digests.local"\npull-from-mirror = "digest-only"\n'
        '[[registry.mirror]]\nlocation = "tags.local"\npull-from-mirror = "tag-only"\n'
    )
    assert [str(s[0]).split("/")[0] for s in sources(c, "quay.io/app:1")] == ["tags.local", "quay.io"]
    assert [str(s[0]).split("/")[0] for s in sources(c, f"quay.io/app@{DIGEST}")] == ["digests.local", "quay.io"]


def test_blocked_registry_refuses_mirrors_too():
    c = conf('[[registry]]\nlocation = "evil.io"\nblocked = true\n[[registry.mirror]]\nlocation = "m.local"\n')
    with pytest.raises(PermissionDenied, match=r"evil\.io"):
        pull_sources(c, normalize("evil.io/app"))


def test_mirror_blocked_in_its_own_entry_is_marked_and_the_rest_stay_in_order():
    c = conf(
        '[[registry]]\nlocation = "quay.io"\n'
        '[[registry.mirror]]\nlocation = "bad.local:5000"\n'
        '[[registry.mirror]]\nlocation = "good.local"\n'
        '[[registry]]\nlocation = "bad.local:5000"\nblocked = true\n'
    )
    got = [(s.reference.domain, s.mirror, s.blocked) for s in pull_sources(c, normalize("quay.io/app:1"))]
    assert got == [("bad.local:5000", True, True), ("good.local", True, False), ("quay.io", False, False)]


def test_short_name_uses_search_registries_in_order():
    c = conf('unqualified-search-registries = ["quay.io", "docker.io"]\n')
    assert [str(r) for r in candidates(c, parse_reference("app:1"))] == [
        "quay.io/app:1", "docker.io/library/app:1"]


def test_short_name_defaults_to_docker_hub():
    assert [str(r) for r in candidates(RegistriesConf(), parse_reference("busybox"))] == [
        "docker.io/library/busybox:latest"]
    c = conf("unqualified-search-registries = []\n")
    assert [str(r) for r in candidates(c, parse_reference("busybox"))] == ["docker.io/library/busybox:latest"]


def test_qualified_name_is_its_only_candidate():
    c = conf('unqualified-search-registries = ["quay.io"]\n')
    assert [str(r) for r in candidates(c, parse_reference("example.com/app"))] == ["example.com/app:latest"]


def test_alias_wins_over_search():
    c = conf('unqualified-search-registries = ["quay.io"]\n[aliases]\n"pause" = "registry.k8s.io/pause"\n')
    assert [str(r) for r in candidates(c, parse_reference("pause:3.9"))] == ["registry.k8s.io/pause:3.9"]


def test_dropins_replace_registries_by_prefix_and_search_only_when_set():
    base = conf(
        'unqualified-search-registries = ["quay.io"]\n'
        '[[registry]]\nlocation = "a.io"\n[[registry]]\nlocation = "b.io"\n'
    )
    dropin = conf('[[registry]]\nlocation = "a.io"\nblocked = true\n')
    merged = base.merged_with(dropin)
    assert merged.unqualified_search_registries == ("quay.io",)
    assert find_registry(merged, "a.io/x").blocked
    assert find_registry(merged, "b.io/x") is not None
    merged = merged.merged_with(conf('unqualified-search-registries = ["r.io"]\n'))
    assert merged.unqualified_search_registries == ("r.io",)


def test_first_entry_of_a_duplicate_prefix_wins():
    c = conf('[[registry]]\nprefix = "a.io"\nlocation = "one.io"\n[[registry]]\nprefix = "a.io"\nlocation = "two.io"\n')
    assert find_registry(c, "a.io/x").location == "one.io"


def test_prefix_defaults_to_location():
    c = conf('[[registry]]\nlocation = "reg.io/ns"\ninsecure = true\n')
    assert find_registry(c, "reg.io/ns/app").prefix == "reg.io/ns"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[registries.search]\nregistries = ['quay.io']\n", "v1 format"),
        ("[[registry]]\ninsecure = true\n", "both location and prefix are unset"),
        ('[[registry]]\nprefix = "a.io"\n', "location is unset"),
        ('[[registry]]\nlocation = "https://a.io"\n', "URI schemes"),
        ('[[registry]]\nprefix = "*.a.io/ns"\n', "wildcard"),
        ('[[registry]]\nlocation = "a.io"\ninsecure = "yes"\n', "expected bool"),
        ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\ninsecure = true\n', "mirror location"),
        ('[[registry]]\nlocation = "a.io"\n[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "x"\n',
         "pull-from-mirror"),
        ('[[registry]]\nlocation = "a.io"\nmirror-by-digest-only = true\n'
         '[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "tag-only"\n', "exclusive"),
        ('[[registry]]\nlocation = "a.io"\nlocaton = "typo"\n', "unknown key"),
        ('[[registry]]\nlocation = "a.io"\n[[registry]]\nprefix = "b.io"\nlocation = "a.io"\ninsecure = true\n',
         "conflicting"),
        ('unqualified-search-registries = ["quay.io/ns"]\n', "host"),
        ('[aliases]\n"a" = "b"\n', "fully qualified"),
        ('[[registry]]\nlocation = "a.io:tag:x"\n', "host"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_invalid_files_are_refused_with_the_reason(text, message):
    with pytest.raises(ConfigError, match=message):
        conf(text)


def test_error_names_the_file():
    with pytest.raises(ConfigError, match=r"^/etc/containers/registries.conf.d/x.conf:"):
        parse_registries_conf("[[registry]]\n", "/etc/containers/registries.conf.d/x.conf")
