"""Credential helpers from containers-auth.json (credHelpers, credsStore) against a real registry."""

import asyncio
import json
import os

import pytest

from services.imaged.auth import AuthFile, Credentials, TokenCache, parse_auth_config
from services.imaged.connections import ConnectionPool
from services.imaged.credential_helpers import parse_helper_output
from services.imaged.host_config import HostConfig
from services.imaged.resolve import Resolver
from shared.config import ImagedConfig
from shared.errors import ConfigError, FailedPrecondition, Unauthenticated, Unavailable
from tests.support.images import build_image
from tests.support.layers import files_layer
from tests.support.push import push
from tests.support.registry import REGISTRY_BINARY, BasicAuth, Registry

USER = BasicAuth("alice", "s3cret")
IMAGE = build_image([files_layer({"etc/hello": b"hello\n"})])

ANSWERING = """#!/bin/sh
host=$(cat)
echo "$1 $host" >> "$(dirname "$0")/asked"
printf '{"ServerURL":"%s","Username":"alice","Secret":"s3cret"}' "$host"
"""
NOT_FOUND = """#!/bin/sh
cat >/dev/null
echo "credentials not found in native keychain"
exit 1
"""
FAILING = """#!/bin/sh
cat >/dev/null
echo "keychain locked" >&2
exit 3
"""
HANGING = "#!/bin/sh\nexec sleep 60\n"


@pytest.fixture(scope="module")
def registry():
    if not REGISTRY_BINARY.exists():
        pytest.skip("docker-registry is not installed")
    with Registry(auth=USER) as registry:
        push(registry, "team/app:v1", IMAGE)
        yield registry


def install_helper(bin_dir, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(script)
    path.chmod(0o755)


def resolve(tmp_path, auth_json: dict, image: str, timeout: float = 10.0):
    (tmp_path / "auth.json").write_text(json.dumps(auth_json))
    (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    host = image.split("/")[0]
    (tmp_path / "registries.conf").write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    config = ImagedConfig(registries_conf=str(tmp_path / "registries.conf"),
                          registries_conf_d=str(tmp_path / "registries.conf.d"),
                          policy=str(tmp_path / "policy.json"), auth_file=str(tmp_path / "auth.json"),
                          certs_dir=str(tmp_path / "certs.d"), retries=0,
                          credential_helper_dirs=(str(tmp_path / "bin"),), credential_helper_timeout=timeout)

    async def scenario():
        pool = ConnectionPool(tmp_path / "certs.d")
        try:
            return await Resolver(config, HostConfig(config), pool, TokenCache()).resolve(image, None)
        finally:
            await pool.aclose()

    return asyncio.run(scenario())


def asked(tmp_path) -> list[str]:
    try:
        return (tmp_path / "bin" / "asked").read_text().splitlines()
    except FileNotFoundError:
        return []


def test_cred_helper_for_the_host_is_asked_with_the_host_on_stdin(registry, tmp_path):
    install_helper(tmp_path / "bin", "cloud", ANSWERING)
    wrong = {"auth": "d3Jvbmc6d3Jvbmc="}  # wrong:wrong, which the helper's answer must beat
    resolved = resolve(tmp_path, {"auths": {registry.host: wrong}, "credHelpers": {registry.host: "cloud"}},
                       f"{registry.host}/team/app:v1")
    assert resolved.manifest_digest == IMAGE.manifest_digest
    assert asked(tmp_path) == [f"get {registry.host}"]


def test_creds_store_answers_for_registries_without_an_entry(registry, tmp_path):
    install_helper(tmp_path / "bin", "store", ANSWERING)
    resolved = resolve(tmp_path, {"auths": {}, "credsStore": "store"}, f"{registry.host}/team/app:v1")
    assert resolved.manifest_digest == IMAGE.manifest_digest
    assert asked(tmp_path) == [f"get {registry.host}"]


def test_helper_that_knows_nothing_means_anonymous(registry, tmp_path):
    install_helper(tmp_path / "bin", "empty", NOT_FOUND)
    with pytest.raises(Unauthenticated):  # the registry's answer to an anonymous pull
        resolve(tmp_path, {"credsStore": "empty"}, f"{registry.host}/team/app:v1")


def test_missing_helper_is_named_in_the_error(registry, tmp_path):
    (tmp_path / "bin").mkdir()
    with pytest.raises(FailedPrecondition, match="docker-credential-absent not found"):
        resolve(tmp_path, {"credHelpers": {registry.host: "absent"}}, f"{registry.host}/team/app:v1")


def test_failing_helper_is_named_with_what_it_said(registry, tmp_path):
    install_helper(tmp_path / "bin", "locked", FAILING)
    with pytest.raises(Unavailable, match=r"docker-credential-locked failed .*exit 3.*keychain locked"):
        resolve(tmp_path, {"credHelpers": {registry.host: "locked"}}, f"{registry.host}/team/app:v1")


def test_hanging_helper_times_out_and_is_killed(registry, tmp_path):
    install_helper(tmp_path / "bin", "slow", HANGING)
    with pytest.raises(Unavailable, match=r"docker-credential-slow did not answer .* within 0.5s"):
        resolve(tmp_path, {"credHelpers": {registry.host: "slow"}}, f"{registry.host}/team/app:v1", timeout=0.5)
    # The helper ran in its own session as `sleep 60`: none of those may be left behind.
    helper = str(tmp_path / "bin" / "docker-credential-slow")
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if helper.encode() in f.read():
                    leftovers.append(pid)
        except OSError:
            pass
    assert leftovers == []


def test_auth_file_helpers_and_store_are_parsed():
    parsed = parse_auth_config(json.dumps({"auths": {}, "credHelpers": {"https://quay.io": "ecr-login"},
                                           "credsStore": "pass"}), "auth.json")
    assert parsed == AuthFile({}, {"quay.io": "ecr-login"}, "pass")


@pytest.mark.parametrize("text", ['{"credHelpers": {"a.io": "../../bin/sh"}}', '{"credsStore": 3}',
                                  '{"credHelpers": ["a"]}'])
def test_helper_names_that_are_no_names_are_refused(text):
    with pytest.raises(ConfigError):
        parse_auth_config(text, "auth.json")


def test_helper_output_forms():
    assert parse_helper_output("h", b'{"Username": "u", "Secret": "p"}') == Credentials("u", "p")
    assert parse_helper_output("h", b'{"Username": "<token>", "Secret": "r"}') == Credentials(identity_token="r")
    assert parse_helper_output("h", b'{"Username": "", "Secret": ""}') is None
    with pytest.raises(FailedPrecondition, match="h answered"):
        parse_helper_output("h", b"nope")
