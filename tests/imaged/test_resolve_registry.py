"""Resolving a name through registries.conf mirrors against real docker-registry processes."""

import asyncio
import json

import pytest

from services.imaged.auth import TokenCache
from services.imaged.connections import ConnectionPool
from services.imaged.host_config import HostConfig
from services.imaged.resolve import Resolver
from shared.config import ImagedConfig
from tests.support.images import build_image
from tests.support.layers import files_layer
from tests.support.push import push
from tests.support.registry import REGISTRY_BINARY, Registry

IMAGE = build_image([files_layer({"etc/hello": b"hello\n"})])


@pytest.fixture
def registries():
    if not REGISTRY_BINARY.exists():
        pytest.skip("docker-registry is not installed")
    with Registry() as main, Registry() as blocked, Registry() as mirror:
        for registry in (main, blocked, mirror):
            push(registry, "team/app:v1", IMAGE)
        yield main, blocked, mirror


def resolver_for(tmp_path, registries_conf: str) -> tuple[Resolver, ConnectionPool]:
    (tmp_path / "registries.conf").write_text(registries_conf)
    (tmp_path / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    config = ImagedConfig(registries_conf=str(tmp_path / "registries.conf"),
                          registries_conf_d=str(tmp_path / "registries.conf.d"),
                          policy=str(tmp_path / "policy.json"), auth_file=str(tmp_path / "auth.json"),
                          certs_dir=str(tmp_path / "certs.d"), retries=0)
    pool = ConnectionPool(tmp_path / "certs.d")
    return Resolver(config, HostConfig(config), pool, TokenCache()), pool


def resolve(tmp_path, registries_conf: str, image: str):
    async def scenario():
        resolver, pool = resolver_for(tmp_path, registries_conf)
        try:
            return await resolver.resolve(image, None)
        finally:
            await pool.aclose()

    return asyncio.run(scenario())


def contacted(registry: Registry) -> bool:
    """Whether anyone asked `registry` for the manifest (the test's own push only PUTs it)."""
    return "GET /v2/team/app/manifests/" in registry.log_tail(lines=1000)


def conf_with_mirrors(main: Registry, *mirrors: Registry, blocked: Registry) -> str:
    text = f'[[registry]]\nlocation = "{main.host}"\ninsecure = true\n'
    for mirror in mirrors:
        text += f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
    return text + f'[[registry]]\nlocation = "{blocked.host}"\ninsecure = true\nblocked = true\n'


def test_blocked_mirror_is_skipped_for_the_next_mirror(registries, tmp_path):
    main, blocked, mirror = registries
    resolved = resolve(tmp_path, conf_with_mirrors(main, blocked, mirror, blocked=blocked), f"{main.host}/team/app:v1")
    assert resolved.source.reference.domain == mirror.host and resolved.source.mirror
    assert str(resolved.name) == f"{main.host}/team/app:v1"
    assert not contacted(blocked)


def test_blocked_only_mirror_falls_through_to_the_main_location(registries, tmp_path):
    main, blocked, _ = registries
    resolved = resolve(tmp_path, conf_with_mirrors(main, blocked, blocked=blocked), f"{main.host}/team/app:v1")
    assert resolved.source.reference.domain == main.host and not resolved.source.mirror
    assert resolved.manifest_digest == IMAGE.manifest_digest
    assert not contacted(blocked)
