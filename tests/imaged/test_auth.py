"""Credentials (CRI AuthConfig, containers-auth.json), WWW-Authenticate parsing, token cache."""

import base64
import json

import pytest

from services.imaged.auth import (
    Challenge,
    Credentials,
    TokenCache,
    basic_header,
    from_cri,
    lookup,
    parse_auth_file,
    parse_token_response,
    parse_www_authenticate,
)
from shared.errors import ConfigError, InvalidArgument, Unauthenticated
from shared.schema.imaged import RegistryAuth


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_docker_hub_bearer_challenge():
    header = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
              'scope="repository:library/busybox:pull"')
    assert parse_www_authenticate(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    })]


def test_several_challenges_and_commas_inside_quotes():
    header = 'Basic realm="Registry Realm", Bearer realm="https://t/x", scope="repository:a:pull,push"'
    assert parse_www_authenticate(header) == [
        Challenge("basic", {"realm": "Registry Realm"}),
        Challenge("bearer", {"realm": "https://t/x", "scope": "repository:a:pull,push"}),
    ]


def test_scheme_and_param_names_are_case_insensitive_values_are_not():
    assert parse_www_authenticate('BEARER Realm="https://A/B"') == [Challenge("bearer", {"realm": "https://A/B"})]


def test_quoted_pair_escapes_and_unquoted_tokens():
    assert parse_www_authenticate(r'Bearer realm="a\"b\\c", service=reg.io') == [
        Challenge("bearer", {"realm": 'a"b\\c', "service": "reg.io"})]


def test_token68_and_bare_scheme():
    assert parse_www_authenticate("Negotiate abc==, Basic") == [
        Challenge("negotiate", {"": "abc=="}), Challenge("basic", {})]


def test_garbage_header_yields_what_it_can():
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate('Bearer realm="unterminated') == [Challenge("bearer", {"realm": "unterminated"})]


def test_cri_auth_field_wins_over_username_password():
    creds = from_cri(RegistryAuth(username="u", password="p", auth=b64("alice:s3:cr3t")))
    assert (creds.username, creds.password) == ("alice", "s3:cr3t")


def test_cri_tokens_and_empty_auth():
    assert from_cri(None) is None
    assert from_cri(RegistryAuth()) is None
    assert from_cri(RegistryAuth(identity_token="refresh")).identity_token == "refresh"
    assert from_cri(RegistryAuth(registry_token="bearer")).registry_token == "bearer"


def test_cri_auth_that_is_not_base64_user_password_is_invalid():
    with pytest.raises(InvalidArgument):
        from_cri(RegistryAuth(auth="%%%"))
    with pytest.raises(InvalidArgument):
        from_cri(RegistryAuth(auth=b64("no-colon")))


def auth_file(auths: dict) -> dict[str, Credentials]:
    return parse_auth_file(json.dumps({"auths": auths}), "auth.json")


def test_auth_file_most_specific_entry_wins():
    auths = auth_file({
        "quay.io": {"auth": b64("host:1")},
        "quay.io/team": {"auth": b64("team:2")},
        "quay.io/team/app": {"auth": b64("app:3")},
    })
    assert lookup(auths, "quay.io/team/app").username == "app"
    assert lookup(auths, "quay.io/team/other").username == "team"
    assert lookup(auths, "quay.io/x").username == "host"
    assert lookup(auths, "quay.io:8443/x") is None
    assert lookup(auths, "docker.io/x") is None


def test_auth_file_legacy_docker_hub_url_key():
    auths = auth_file({"https://index.docker.io/v1/": {"auth": b64("hub:pw")}})
    assert lookup(auths, "docker.io/library/busybox").username == "hub"


def test_auth_file_path_key_beats_legacy_url_key_of_same_host():
    auths = auth_file({"reg.io": {"auth": b64("plain:1")}, "https://reg.io": {"auth": b64("legacy:2")}})
    assert lookup(auths, "reg.io/app").username == "plain"


def test_auth_file_identity_token_and_empty_entries():
    auths = auth_file({"a.io": {"identitytoken": "tok"}, "b.io": {}})
    assert lookup(auths, "a.io/x").identity_token == "tok"
    assert lookup(auths, "b.io/x") is None


@pytest.mark.parametrize("text", ["{", '{"auths": []}', '{"auths": {"a.io": {"auth": "***"}}}', "[]"])
def test_invalid_auth_files_are_refused(text):
    with pytest.raises(ConfigError):
        parse_auth_file(text, "auth.json")


def test_credentials_repr_hides_secrets():
    creds = Credentials("alice", "hunter2", "idtok", "regtok")
    assert "hunter2" not in repr(creds) and "idtok" not in repr(creds)
    assert creds.fingerprint() != Credentials("alice", "other").fingerprint()


def test_basic_header():
    assert basic_header(Credentials("a", "b:c")) == "Basic " + b64("a:b:c")


def test_token_cache_expires_early():
    cache = TokenCache()
    key = ("realm", "svc", "repository:a:pull", "")
    cache.put(key, "tok", lifetime_s=60, now=1000.0)
    assert cache.get(key, now=1050.0) == "tok"
    assert cache.get(key, now=1054.5) is None  # renewed 10% (6 s) before it expires
    assert cache.get(key, now=1055.0) is None


def test_token_response_forms():
    assert parse_token_response(b'{"token": "t", "expires_in": 300}') == ("t", 300.0)
    assert parse_token_response(b'{"access_token": "a"}') == ("a", 60.0)
    with pytest.raises(Unauthenticated):
        parse_token_response(b"{}")
    with pytest.raises(Unauthenticated):
        parse_token_response(b"<html>")


def test_token_cache_drop_forgets_a_refused_token():
    cache = TokenCache()
    key = ("realm", "svc", "repository:a:pull", "")
    cache.put(key, "tok", lifetime_s=60, now=1000.0)
    cache.drop(key)
    assert cache.get(key, now=1000.0) is None
    cache.drop(key)  # dropping twice (two pulls saw the same 401) is harmless
