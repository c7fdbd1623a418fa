"""Bearer tokens against a real docker-registry with `auth: token` whose signing key rotates."""

import asyncio

import pytest

from services.imaged.auth import TokenCache
from services.imaged.connections import ConnectionPool
from services.imaged.distribution import RegistryClient
from services.imaged.manifest import ImageManifest, parse_manifest
from shared.errors import Unauthenticated
from tests.support.images import build_image
from tests.support.layers import files_layer
from tests.support.push import push
from tests.support.registry import REGISTRY_BINARY, Registry
from tests.support.token_server import BearerFromServer, TokenServer

REPO = "criplex/rotating"


@pytest.fixture
def token_registry():
    if not REGISTRY_BINARY.exists():
        pytest.skip("docker-registry is not installed")
    server = TokenServer()
    try:
        with Registry(auth_config=server.registry_auth_config(), client_auth=BearerFromServer(server)) as registry:
            push(registry, f"{REPO}:v1", build_image([files_layer({"etc/hello": b"hello\n"})]))
            yield server, registry
    finally:
        server.stop()


def pull_twice(server: TokenServer, registry: Registry, tmp_path, between) -> tuple[int, int]:
    """Two pulls (manifest, config, layer) sharing one token cache, `between` run between them."""
    tokens = TokenCache()

    async def pull(pool: ConnectionPool, n: int) -> None:
        client = RegistryClient(pool.get(registry.host, True), REPO, None, tokens, pool.auth_http, retries=0)
        fetched = await client.manifest("v1")
        manifest = parse_manifest(fetched.body, fetched.media_type)
        assert isinstance(manifest, ImageManifest)
        await client.blob(manifest.config)
        await client.download(manifest.layers[0], tmp_path / f"layer{n}", lambda _: None)

    async def scenario() -> tuple[int, int]:
        pool = ConnectionPool(tmp_path / "certs.d")
        try:
            await pull(pool, 1)
            first = server.tokens_issued
            await asyncio.to_thread(between)
            await pull(pool, 2)
            return first, server.tokens_issued
        finally:
            await pool.aclose()

    return asyncio.run(scenario())


def test_cached_token_is_reused_while_the_registry_accepts_it(token_registry, tmp_path):
    server, registry = token_registry
    first, total = pull_twice(server, registry, tmp_path, lambda: None)
    assert first == 1 and total == 1


def test_token_rejected_after_key_rotation_is_dropped_and_fetched_again(token_registry, tmp_path):
    server, registry = token_registry

    def rotate() -> None:
        server.rotate()
        registry.restart()  # the registry reads its root bundle at start: old tokens now fail

    first, total = pull_twice(server, registry, tmp_path, rotate)
    assert first == 1
    assert total == 2  # exactly one fresh token, reused for the rest of the pull
    assert (tmp_path / "layer2").read_bytes() == (tmp_path / "layer1").read_bytes()


def test_a_fresh_token_refused_too_is_the_registrys_answer(token_registry, tmp_path):
    server, registry = token_registry
    tokens = TokenCache()

    async def scenario() -> None:
        pool = ConnectionPool(tmp_path / "certs.d")
        try:
            client = RegistryClient(pool.get(registry.host, True), REPO, None, tokens, pool.auth_http, retries=0)
            await client.manifest("v1")
        finally:
            await pool.aclose()

    # The registry trusts a CA the token server no longer signs with: every token fails.
    server.rotate()
    issued = server.tokens_issued
    with pytest.raises(Unauthenticated):
        asyncio.run(scenario())
    assert server.tokens_issued == issued + 1
