"""The CRI ImageService end to end: gateway → imaged → registry, storaged → disk."""

from __future__ import annotations

import base64
import json
import threading

import grpc
import pytest

from shared.cri import api_pb2
from tests.support.fixtures import REGISTRY_CREDENTIALS
from tests.support.images import build_busybox_image, build_multiarch_busybox, build_whiteout_image
from tests.support.layers import files_layer, random_layer
from tests.support.push import push, push_index


def pull(images, reference: str, auth: api_pb2.AuthConfig | None = None, timeout: float = 60) -> str:
    with images.run.client() as c:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=reference))
        if auth is not None:
            req.auth.CopyFrom(auth)
        return c.image.PullImage(req, timeout=timeout).image_ref


def status(images, name: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    with images.run.client() as c:
        return c.image.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=name), verbose=verbose),
                                   timeout=10)


def list_images(images, name: str = "") -> list[api_pb2.Image]:
    with images.run.client() as c:
        req = api_pb2.ListImagesRequest()
        if name:
            req.filter.image.image = name
        return list(c.image.ListImages(req, timeout=10).images)


def remove(images, name: str) -> None:
    with images.run.client() as c:
        c.image.RemoveImage(api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=name)), timeout=30)


def pull_error(images, reference: str, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        pull(images, reference, **kwargs)
    return err.value


def test_pull_returns_config_digest_and_image_is_listed_with_tags_digests_size_user(images, repo):
    image = build_busybox_image([files_layer({"/app/hello": b"hi\n"})], user="1000:1000")
    digest = push(images.registry, f"{repo}:v1", image)
    ref = f"{images.registry.host}/{repo}:v1"
    image_id = pull(images, ref)
    assert image_id == image.config_digest
    st = status(images, ref).image
    assert st.id == image_id
    assert list(st.repo_tags) == [ref]
    assert list(st.repo_digests) == [f"{images.registry.host}/{repo}@{digest}"]
    assert st.uid.value == 1000 and st.username == ""
    assert st.size == sum(layer.size for layer in image.layers) + len(image.config_blob)
    assert [i.id for i in list_images(images, ref)] == [image_id]
    assert image_id in {i.id for i in list_images(images)}
    # The same image is found by ID, ID prefix and digest.
    for name in (image_id, image_id.removeprefix("sha256:")[:12], f"{images.registry.host}/{repo}@{digest}"):
        assert status(images, name).image.id == image_id


def test_image_status_of_unknown_image_is_empty_not_an_error(images):
    assert not status(images, "no-such-image:never").HasField("image")


# Each is refused before any lookup: none may send imaged to a resolver or a registry.
@pytest.mark.parametrize("reference", ["", "bad::tag", "a" * 300 + ":x", "name@sha256:short", "Upper-Case-Path"])
def test_image_names_that_are_not_references_are_invalid_for_every_image_call(images, reference):
    with images.run.client() as c:
        spec = api_pb2.ImageSpec(image=reference)
        for call, request in ((c.image.PullImage, api_pb2.PullImageRequest(image=spec)),
                              (c.image.ImageStatus, api_pb2.ImageStatusRequest(image=spec)),
                              (c.image.RemoveImage, api_pb2.RemoveImageRequest(image=spec))):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, caught.value.details())


def test_verbose_status_reports_layers_and_config(images, repo):
    image = build_busybox_image(user="app")
    push(images.registry, f"{repo}:v1", image)
    ref = f"{images.registry.host}/{repo}:v1"
    pull(images, ref)
    st = status(images, ref, verbose=True)
    assert st.image.username == "app" and not st.image.HasField("uid")
    info = json.loads(st.info["info"])
    assert json.dumps(info).count("sha256:") >= len(image.layers) + 1


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layers_in_every_compression_pull_and_unpack(images, repo, compression):
    image = build_busybox_image([random_layer(200_000, compression, seed=7)], compression=compression)
    push(images.registry, f"{repo}:c", image)
    assert pull(images, f"{images.registry.host}/{repo}:c") == image.config_digest


def test_docker_schema2_manifest_pulls(images, repo):
    image = build_busybox_image(manifest_format="docker")
    push(images.registry, f"{repo}:d", image)
    assert pull(images, f"{images.registry.host}/{repo}:d") == image.config_digest


def test_multi_arch_index_resolves_to_the_node_platform(images, repo):
    index = build_multiarch_busybox()
    index_digest = push_index(images.registry, f"{repo}:multi", index)
    ref = f"{images.registry.host}/{repo}:multi"
    amd64 = next(i for i in index.images if i.config.architecture == "amd64")
    assert pull(images, ref) == amd64.config_digest
    assert f"{images.registry.host}/{repo}@{index_digest}" in status(images, ref).image.repo_digests


def test_pull_by_digest(images, repo):
    image = build_busybox_image([files_layer({"/d": b"by digest\n"})])
    digest = push(images.registry, f"{repo}:x", image)
    assert pull(images, f"{images.registry.host}/{repo}@{digest}") == image.config_digest


def test_short_name_resolves_through_unqualified_search_registries(images):
    image = build_busybox_image([files_layer({"/short": b"1\n"})])
    push(images.registry, "shortname-test:latest", image)
    assert pull(images, "shortname-test") == image.config_digest
    assert f"{images.registry.host}/shortname-test:latest" in status(images, "shortname-test").image.repo_tags


def test_prefix_rewrite_and_mirrors_tried_in_order(images, repo):
    image = build_busybox_image([files_layer({"/mirror": b"m\n"})])
    name = repo.removeprefix("criplex-test/")
    push(images.registry, f"{repo}:v1", image)
    assert pull(images, f"rewritten.example/app/{name}:v1") == image.config_digest
    # mirrored.example: the first mirror and the main location are dead; the second mirror serves.
    assert pull(images, f"mirrored.example/{name}:v1") == image.config_digest
    assert f"mirrored.example/{name}:v1" in status(images, f"mirrored.example/{name}:v1").image.repo_tags


def test_blocked_registry_is_refused(images):
    err = pull_error(images, "blocked.example/anything:1")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "blocked" in err.details()


def test_policy_reject_is_enforced(images):
    image = build_busybox_image()
    push(images.registry, "criplex-test/rejected:1", image)
    err = pull_error(images, f"{images.registry.host}/criplex-test/rejected:1")
    assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION)
    assert not status(images, f"{images.registry.host}/criplex-test/rejected:1").HasField("image")


def test_unknown_manifest_is_not_found_with_the_registry_message(images, repo):
    err = pull_error(images, f"{images.registry.host}/{repo}:missing")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "manifest unknown" in err.details().lower()


def test_basic_auth_from_cri_auth_config(images, repo):
    image = build_busybox_image([files_layer({"/auth": b"1\n"})])
    push(images.auth_registry, f"{repo}:v1", image)
    ref = f"{images.auth_registry.host}/{repo}:v1"
    assert pull_error(images, ref).code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = api_pb2.AuthConfig(username=REGISTRY_CREDENTIALS.username, password="wrong")
    assert pull_error(images, ref, auth=wrong).code() == grpc.StatusCode.UNAUTHENTICATED
    auth = api_pb2.AuthConfig(username=REGISTRY_CREDENTIALS.username, password=REGISTRY_CREDENTIALS.password)
    assert pull(images, ref, auth=auth) == image.config_digest
    token = base64.b64encode(f"{REGISTRY_CREDENTIALS.username}:{REGISTRY_CREDENTIALS.password}".encode())
    remove(images, ref)
    assert pull(images, ref, auth=api_pb2.AuthConfig(auth=token.decode())) == image.config_digest


def test_credentials_from_the_auth_file(images, repo):
    image = build_busybox_image([files_layer({"/authfile": b"1\n"})])
    push(images.auth_registry, f"{repo}:v1", image)
    token = base64.b64encode(f"{REGISTRY_CREDENTIALS.username}:{REGISTRY_CREDENTIALS.password}".encode())
    auth_file = images.registries_conf.parent / "auth.json"
    auth_file.write_text(json.dumps({"auths": {images.auth_registry.host: {"auth": token.decode()}}}))
    try:
        assert pull(images, f"{images.auth_registry.host}/{repo}:v1") == image.config_digest
    finally:
        auth_file.unlink()


def test_remove_by_tag_id_and_digest_and_missing_is_fine(images, repo):
    image = build_busybox_image([files_layer({"/rm": b"1\n"})])
    digest = push(images.registry, f"{repo}:v1", image)
    ref = f"{images.registry.host}/{repo}:v1"
    for name in (ref, image.config_digest, f"{images.registry.host}/{repo}@{digest}"):
        pull(images, ref)
        remove(images, name)
        assert not status(images, ref).HasField("image")
        assert image.config_digest not in {i.id for i in list_images(images)}
    remove(images, ref)  # idempotent


def test_tag_moves_to_the_newer_image(images, repo):
    first = build_busybox_image([files_layer({"/v": b"1\n"})])
    second = build_busybox_image([files_layer({"/v": b"2\n"})])
    ref = f"{images.registry.host}/{repo}:moving"
    push(images.registry, f"{repo}:moving", first)
    pull(images, ref)
    push(images.registry, f"{repo}:moving", second)
    pull(images, ref)
    assert status(images, ref).image.id == second.config_digest
    assert ref not in status(images, first.config_digest).image.repo_tags


def test_pinned_pause_image(images):
    image = build_busybox_image([files_layer({"/pause": b"1\n"})])
    push(images.registry, "criplex-test/pause:3.9", image)
    pull(images, f"{images.registry.host}/criplex-test/pause:3.9")
    assert status(images, f"{images.registry.host}/criplex-test/pause:3.9").image.pinned


def test_concurrent_pulls_of_one_image_share_the_work(images, repo):
    image = build_busybox_image([random_layer(3_000_000, seed=i) for i in range(3)])
    push(images.registry, f"{repo}:big", image)
    ref = f"{images.registry.host}/{repo}:big"
    results: list[str] = []
    errors: list[Exception] = []

    def one():
        try:
            results.append(pull(images, ref))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [image.config_digest] * 4
    assert len([i for i in list_images(images) if i.id == image.config_digest]) == 1


def test_image_fs_info_reports_real_usage_that_grows_with_pulls(images, repo):
    def usage():
        with images.run.client() as c:
            fs = c.image.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
        return fs.used_bytes.value, fs.inodes_used.value, fs.fs_id.mountpoint

    before, inodes_before, mountpoint = usage()
    assert mountpoint.startswith(str(images.run.state_dir))
    image = build_busybox_image([random_layer(2_000_000, seed=99)])
    push(images.registry, f"{repo}:fs", image)
    pull(images, f"{images.registry.host}/{repo}:fs")
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after, inodes_after, _ = usage()
        if after >= before + 2_000_000:
            break
        time.sleep(0.5)
    assert after >= before + 2_000_000
    assert inodes_after > inodes_before


def test_whiteout_image_pulls(images, repo):
    image = build_whiteout_image()
    push(images.registry, f"{repo}:wh", image)
    assert pull(images, f"{images.registry.host}/{repo}:wh") == image.config_digest
