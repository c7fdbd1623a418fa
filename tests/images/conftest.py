"""A criplex whose imaged resolves names to the test registries (registries.conf, policy.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.registry import Registry
from tests.support.runtime import CriplexRun


@dataclass
class ImageRuntime:
    run: CriplexRun
    registries_conf: Path
    registry: Registry
    auth_registry: Registry

    def allow_insecure(self, host: str) -> None:
        """Add a plain-HTTP registry (imaged re-reads registries.conf when it changes)."""
        with self.registries_conf.open("a") as f:
            f.write(f'\n[[registry]]\nlocation = "{host}"\ninsecure = true\n')


def registries_conf(registry: Registry, auth_registry: Registry) -> str:
    host = registry.host
    return f"""
unqualified-search-registries = ["{host}"]

[[registry]]
location = "{host}"
insecure = true

[[registry]]
location = "{auth_registry.host}"
insecure = true

[[registry]]
prefix = "rewritten.example/app"
location = "{host}/criplex-test"
insecure = true

[[registry]]
prefix = "blocked.example"
location = "blocked.example"
blocked = true

[[registry]]
prefix = "mirrored.example"
location = "127.0.0.1:9"
insecure = true
[[registry.mirror]]
location = "127.0.0.1:7"
insecure = true
[[registry.mirror]]
location = "{host}/criplex-test"
insecure = true
"""


def policy(registry: Registry) -> dict[str, object]:
    return {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {f"{registry.host}/criplex-test/rejected": [{"type": "reject"}]}},
    }


def image_runtime(registry: Registry, auth_registry: Registry, etc: Path, extra_toml: str = "",
                  imaged_toml: str = "") -> Iterator[ImageRuntime]:
    """A started criplex using `etc` for its containers files; `extra_toml` adds other tables,
    `imaged_toml` more [imaged] keys."""
    conf = etc / "registries.conf"
    conf.write_text(registries_conf(registry, auth_registry))
    (etc / "policy.json").write_text(json.dumps(policy(registry)))
    extra = (f'[imaged]\nregistries_conf = "{conf}"\nregistries_conf_d = "{etc}/registries.conf.d"\n'
             f'policy = "{etc}/policy.json"\nauth_file = "{etc}/auth.json"\ncerts_dir = "{etc}/certs.d"\n'
             f'pause_image = "{registry.host}/criplex-test/pause:3.9"\n{imaged_toml}{extra_toml}')
    run = CriplexRun(extra_toml=extra)
    try:
        run.start()
        yield ImageRuntime(run, conf, registry, auth_registry)
    finally:
        run.stop()


@pytest.fixture(scope="module")
def images(registry: Registry, auth_registry: Registry, tmp_path_factory) -> Iterator[ImageRuntime]:
    yield from image_runtime(registry, auth_registry, tmp_path_factory.mktemp("containers"))
