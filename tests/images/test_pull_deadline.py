"""PullImage without a client deadline is bounded by imaged.pull_timeout, not gateway.default_timeout.

The kubelet (and crictl) send PullImage with no deadline at all. gateway.default_timeout
is sized for quick calls (120 s by default); applied to pulls it cut every pull of a
large image at that point and threw its partial downloads away, so the image could
never be pulled. Here the default is 2 s and a registry makes the pull take over 4 s.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import grpc
import pytest

from services.gateway.instrument import Call
from services.gateway.pull_image import pull_timeout
from shared.config import Config, GatewayConfig, ImagedConfig
from shared.cri import api_pb2
from tests.images.conftest import image_runtime
from tests.support.images import build_busybox_image
from tests.support.layers import files_layer
from tests.support.push import push


@pytest.fixture(scope="module")
def short_default(registry, auth_registry, tmp_path_factory):
    yield from image_runtime(registry, auth_registry, tmp_path_factory.mktemp("containers"),
                             extra_toml="[gateway]\ndefault_timeout = 2.0\n", imaged_toml="pull_timeout = 30.0\n")


def slow_image(runtime, lying_registry, repo) -> tuple[str, str]:
    runtime.allow_insecure(lying_registry.host)
    image = build_busybox_image([files_layer({"/slow": repo.encode()})])
    push(runtime.registry, f"{repo}:v1", image)
    # The layer is answered "503, retry after 4 s" once: the pull takes more than 4 s.
    lying_registry.fail_blob(image.layers[-1].digest, times=1, status=503, retry_after=4)
    return f"{lying_registry.host}/{repo}:v1", image.config_digest


def test_a_pull_without_a_deadline_may_outlast_the_default_timeout(short_default, lying_registry, repo):
    ref, image_id = slow_image(short_default, lying_registry, repo)
    started = time.monotonic()
    with short_default.run.client() as c:
        # No timeout: exactly what the kubelet sends.
        answer = c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
    assert answer.image_ref == image_id
    assert time.monotonic() - started > 3.5


def test_a_client_deadline_still_bounds_the_pull(short_default, lying_registry, repo):
    ref, _ = slow_image(short_default, lying_registry, repo)
    with short_default.run.client() as c, pytest.raises(grpc.RpcError) as err:
        c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)), timeout=1.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.fixture(scope="module")
def short_pull_timeout(registry, auth_registry, tmp_path_factory):
    yield from image_runtime(registry, auth_registry, tmp_path_factory.mktemp("containers"),
                             imaged_toml="pull_timeout = 2.0\n")


def test_imaged_pull_timeout_ends_a_stalled_pull_clearly_and_the_next_pull_works(short_pull_timeout,
                                                                                   lying_registry, repo):
    ref, image_id = slow_image(short_pull_timeout, lying_registry, repo)
    with short_pull_timeout.run.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "imaged.pull_timeout" in (err.value.details() or ""), err.value.details()
        assert not c.image.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))).HasField("image")
        # The registry answers at once now: the same pull goes through.
        answer = c.image.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
    assert answer.image_ref == image_id


def test_pull_timeout_choice():
    gw = SimpleNamespace(config=Config(gateway=GatewayConfig(default_timeout=120.0),
                                       imaged=ImagedConfig(pull_timeout=600.0)))
    assert pull_timeout(gw, Call("PullImage", 120.0, has_deadline=False)) == 605.0
    assert pull_timeout(gw, Call("PullImage", 37.5, has_deadline=True)) == 37.5  # the client's deadline
    assert pull_timeout(gw, Call("PullImage", 120.0, has_deadline=True)) == 120.0
    short = SimpleNamespace(config=Config(gateway=GatewayConfig(default_timeout=900.0),
                                          imaged=ImagedConfig(pull_timeout=60.0)))
    assert pull_timeout(short, Call("PullImage", 900.0, has_deadline=False)) == 900.0  # never below the default
