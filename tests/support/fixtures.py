"""Plain pytest fixtures for real-registry tests. Enable them from a conftest with::

    pytest_plugins = ["tests.support.fixtures"]

Registries are session-scoped (one process each for the whole run); tests share them,
so each test should push under its own name: use the ``repo`` fixture. The lying
proxy is per test, so armed faults never leak from one test to the next.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.hostile import plant_canary
from tests.support.images import Image, build_busybox_image
from tests.support.lying_registry import LyingRegistry
from tests.support.push import push
from tests.support.registry import REGISTRY_BINARY, BasicAuth, Registry

REGISTRY_CREDENTIALS = BasicAuth("criplex", "correct horse battery staple")


def _start(make: Callable[[], Registry] = Registry) -> Iterator[Registry]:
    if not REGISTRY_BINARY.exists():
        pytest.skip(f"{REGISTRY_BINARY} not installed (Debian package docker-registry)")
    registry = make()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """Anonymous plain-HTTP registry."""
    yield from _start()


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    """htpasswd basic auth with REGISTRY_CREDENTIALS; ``auth_registry.client()`` logs in."""
    yield from _start(lambda: Registry(auth=REGISTRY_CREDENTIALS))


@pytest.fixture(scope="session")
def tls_registry() -> Iterator[Registry]:
    """HTTPS with a throwaway CA: ``tls_registry.write_certs_d(dir)`` makes certs.d."""
    yield from _start(lambda: Registry(tls=True))


@pytest.fixture(scope="session")
def mtls_registry() -> Iterator[Registry]:
    """HTTPS that also demands a client certificate (certs.d ``client.cert``/``client.key``)."""
    yield from _start(lambda: Registry(client_cert_required=True))


@pytest.fixture(scope="session")
def schema1_registry() -> Iterator[Registry]:
    """Accepts schema1 pushes (``push.push_schema1``); otherwise like ``registry``."""
    yield from _start(lambda: Registry(schema1=True))


@pytest.fixture
def lying_registry(registry: Registry) -> Iterator[LyingRegistry]:
    """A fresh fault-injecting proxy in front of the shared ``registry``."""
    with LyingRegistry(registry) as proxy:
        yield proxy


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, valid under the distribution name grammar."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60] or "test"
    return f"criplex-test/{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def busybox_image() -> Image:
    return build_busybox_image()


@dataclass(frozen=True)
class PushedImage:
    image: Image
    reference: str  # "127.0.0.1:PORT/name:tag", what a CRI PullImage request carries
    name: str
    digest: str


@pytest.fixture(scope="session")
def pushed_busybox(registry: Registry, busybox_image: Image) -> PushedImage:
    """``busybox_image`` already in ``registry`` as criplex-test/busybox:latest."""
    digest = push(registry, "criplex-test/busybox:latest", busybox_image)
    return PushedImage(
        image=busybox_image,
        reference=f"{registry.host}/criplex-test/busybox:latest",
        name="criplex-test/busybox",
        digest=digest,
    )


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A host file hostile layers aim at, outside any rootfs made under ``tmp_path``."""
    return plant_canary(tmp_path / "outside-rootfs")
