"""A pull steps aside while a pod starts (gateway.pulls_yield_ms, shared/pod_starts.py).

A prestart hook holds one CreateContainer in flight; meanwhile a pull of a big image makes no
progress, and it finishes once the pod start is done.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cri import api_pb2
from tests.pods.conftest import start_pods
from tests.support.fixtures import PushedImage
from tests.support.images import build_busybox_image
from tests.support.layers import random_layer
from tests.support.pods import Pods, container_config, sandbox_config
from tests.support.push import push
from tests.support.registry import Registry
from tests.support.runtime import wait_for

LAYER_BYTES = 24 << 20


@pytest.fixture(scope="module")
def pods(registry: Registry, pushed_busybox: PushedImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    # pods_toml's last table is [gateway]: this key joins it. A pause lasts up to 10 s here, so
    # a pull's progress while the pod start is held shows the yielding, not the limit.
    yield from start_pods(registry, pushed_busybox, tmp_path_factory.mktemp("containers"),
                          extra_toml="pulls_yield_ms = 10000\n")


def downloaded(pods: Pods) -> int:
    incoming = pods.run.state_dir / "storaged" / "incoming"
    return sum(p.stat().st_size for p in incoming.glob("*.partial")) if incoming.exists() else 0


def test_a_pull_waits_while_a_pod_starts_and_finishes_after(pods: Pods, registry: Registry, tmp_path: Path):
    big = build_busybox_image([random_layer(LAYER_BYTES, seed=77)])
    reference = f"{registry.host}/criplex-test/yield-{tmp_path.name.lower()}:v1"
    push(registry, reference.split("/", 1)[1], big)

    started, release = tmp_path / "hook-started", tmp_path / "release"
    script = tmp_path / "hold.sh"
    script.write_text(f"#!/bin/sh\ntouch {started}\nwhile [ ! -e {release} ]; do sleep 0.01; done\n")
    script.chmod(0o755)
    hook_file = pods.etc / "hooks.d" / f"{tmp_path.name}.json"
    hook_file.write_text(json.dumps({
        "version": "1.0.0", "hook": {"path": str(script)}, "stages": ["prestart"],
        "when": {"annotations": {"^criplex\\.test/hold$": "^yes$"}}}))
    results: dict[str, object] = {}

    def create() -> None:
        sandbox = sandbox_config()
        config = container_config(pods.image, ["sleep", "3600"])
        config.annotations["criplex.test/hold"] = "yes"
        results["container"] = pods.create(pods.run_pod(sandbox), config, sandbox)

    def pull() -> None:
        response = pods.client.image.PullImage(
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=reference)), timeout=120)
        results["image"] = response.image_ref
        results["pulled_at"] = time.monotonic()

    creating = threading.Thread(target=create)
    pulling = threading.Thread(target=pull)
    try:
        creating.start()
        wait_for(started.exists, 30, "the prestart hook to hold CreateContainer")
        pulling.start()
        # The pull gets its manifest and config (small), then its download stands still: two
        # seconds of a held pod start see no more than the first chunk of the layer arrive.
        wait_for(lambda: any((pods.run.state_dir / "storaged" / "incoming").glob("*.partial")), 30,
                 "the layer's download to begin")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert downloaded(pods) <= 2 << 20
            assert "image" not in results
            time.sleep(0.05)
    finally:
        release.touch()
        released_at = time.monotonic()
        creating.join(60)
        pulling.join(120)
        hook_file.unlink()
    assert "container" in results
    assert results["image"] == big.config_digest
    assert float(results["pulled_at"]) - released_at < 8  # it went on at once, not after the 10 s limit
