"""Criplexes with real pods for the operator's tools: `observed` (metrics on, the span ring on by
default), and `pods` / `pod` (the default configuration, one criplex per test module)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

# `pods` / `pod`: the same fixtures as tests/pods, one criplex per test module.
from tests.pods.conftest import pod, pods, start_pods  # noqa: F401
from tests.support.fixtures import PushedImage
from tests.support.pods import Pods
from tests.support.registry import Registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def observed(registry: Registry, pushed_busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Pods]:
    port = free_port()
    for running in start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("operations"),
                              extra_toml=f'[metrics]\nenable = true\naddress = "127.0.0.1"\nport = {port}\n'):
        running.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
        yield running
