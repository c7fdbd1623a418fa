"""containers-policy.json: scope lookup, accept/reject enforcement, signature requirements refused."""

import json

import pytest

from services.imaged.policy import check, parse_policy, requirements_for, scope_candidates
from services.imaged.reference import normalize
from shared.errors import ConfigError, FailedPrecondition, PermissionDenied

ACCEPT = [{"type": "insecureAcceptAnything"}]
REJECT = [{"type": "reject"}]
SIGNED = [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/etc/pki/key.gpg"}]


def policy(default=ACCEPT, **scopes):
    return parse_policy(json.dumps({"default": default, "transports": {"docker": scopes}}), "policy.json")


def test_scope_candidates_go_from_the_full_reference_to_wildcard_domains():
    assert scope_candidates(normalize("a.b.example.com:5000/ns/app:1")) == [
        "a.b.example.com:5000/ns/app:1",
        "a.b.example.com:5000/ns/app",
        "a.b.example.com:5000/ns",
        "a.b.example.com:5000",
        "*.b.example.com",
        "*.example.com",
        "*.com",
    ]


def test_default_applies_when_no_scope_matches():
    with pytest.raises(PermissionDenied, match="rejected"):
        check(policy(default=REJECT), normalize("quay.io/app"))
    check(policy(), normalize("quay.io/app"))


def test_repository_scope_overrides_default():
    p = policy(default=REJECT, **{"docker.io/library/busybox": ACCEPT})
    check(p, normalize("busybox"))
    with pytest.raises(PermissionDenied):
        check(p, normalize("alpine"))


def test_most_specific_scope_wins():
    p = policy(**{"quay.io": REJECT, "quay.io/team": ACCEPT, "quay.io/team/bad:1": REJECT})
    check(p, normalize("quay.io/team/app"))
    check(p, normalize("quay.io/team/bad:2"))
    with pytest.raises(PermissionDenied):
        check(p, normalize("quay.io/team/bad:1"))
    with pytest.raises(PermissionDenied):
        check(p, normalize("quay.io/other/app"))


def test_namespace_scope_matches_whole_components_only():
    p = policy(default=REJECT, **{"quay.io/team": ACCEPT})
    with pytest.raises(PermissionDenied):
        check(p, normalize("quay.io/teamx/app"))


def test_wildcard_domain_scope():
    p = policy(default=REJECT, **{"*.example.com": ACCEPT})
    check(p, normalize("reg.example.com/app"))
    with pytest.raises(PermissionDenied):
        check(p, normalize("example.com/app"))


def test_transport_default_scope_sits_between_scopes_and_default():
    p = policy(default=ACCEPT, **{"": REJECT, "quay.io": ACCEPT})
    check(p, normalize("quay.io/app"))
    with pytest.raises(PermissionDenied):
        check(p, normalize("docker.io/app"))


def test_digest_reference_scope():
    digest = "sha256:" + "d" * 64
    p = policy(default=REJECT, **{f"quay.io/app@{digest}": ACCEPT})
    check(p, normalize(f"quay.io/app@{digest}"))


@pytest.mark.parametrize("kind", ["signedBy", "sigstoreSigned", "signedBaseLayer"])
def test_signature_requirements_are_refused_not_silently_accepted(kind):
    p = policy(**{"quay.io": [{"type": kind, "keyPath": "/k"}]})
    with pytest.raises(FailedPrecondition, match=f"{kind}.*does not verify signatures"):
        check(p, normalize("quay.io/app"))
    check(p, normalize("docker.io/app"))


def test_reject_wins_over_an_unsupported_requirement_in_the_same_scope():
    p = policy(default=[*SIGNED, *REJECT])
    with pytest.raises(PermissionDenied):
        check(p, normalize("quay.io/app"))


def test_requirements_for_names_the_scope():
    scope, reqs = requirements_for(policy(**{"quay.io": SIGNED}), normalize("quay.io/a/b"))
    assert scope == "quay.io"
    assert reqs[0].type == "signedBy"
    assert reqs[0].detail["keyPath"] == "/etc/pki/key.gpg"


def test_other_transports_are_parsed_and_ignored():
    text = json.dumps({"default": ACCEPT, "transports": {"docker-daemon": {"": REJECT}}})
    check(parse_policy(text, "p"), normalize("quay.io/app"))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"transports": {}}, "default"),
        ({"default": []}, "non-empty"),
        ({"default": [{"type": "acceptIfLucky"}]}, "unknown requirement type"),
        ({"default": [{"type": "reject", "extra": 1}]}, "takes no fields"),
        ({"default": ACCEPT, "transports": {"docker": {"https://quay.io": ACCEPT}}}, "invalid scope"),
        ({"default": ACCEPT, "transports": {"docker": {"*.a.io/ns": ACCEPT}}}, "wildcard"),
        ({"default": ACCEPT, "typo": 1}, "unknown key"),
        ([], "object"),
    ],
)
def test_invalid_policies_are_refused(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(json.dumps(doc), "policy.json")


def test_not_json_is_refused():
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_policy("{", "policy.json")
