"""A layer unpacks while its blob downloads, and is committed only once the blob verified.

A fault-injecting proxy in front of the real registry holds a blob's download half-way
(the test sees storaged's unpack already holding the first files), or serves a blob whose
content is right (it decompresses to the diff_id) but whose bytes are not the ones the
manifest names: the layer must never be stored from it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc

from services.imaged.manifest import chain_ids
from tests.images.test_image_failures import incoming, storaged_dir, stored_layers
from tests.images.test_image_service import pull, pull_error, remove
from tests.support.images import build_busybox_image
from tests.support.layers import Layer, files_layer
from tests.support.push import push
from tests.support.runtime import wait_for

FILES = 24
FILE_SIZE = 256 << 10


def many_files_layer() -> Layer:
    # Random content: gzip cannot shrink it, so the blob's byte offsets follow the tar's.
    return files_layer({f"/data/f{i:02d}": os.urandom(FILE_SIZE) for i in range(FILES)})


def unpacking(images) -> list[str]:
    """Names of the files an unpack in progress has written so far."""
    names: list[str] = []
    layers = storaged_dir(images) / "layers"
    for tmp in layers.glob(".tmp-*"):
        data = tmp / "diff" / "data"
        if data.is_dir():
            names.extend(os.listdir(data))
    return names


def layer_key(image, index: int) -> str:
    return chain_ids(image.diff_ids)[index].split(":")[1]


def test_a_layer_unpacks_while_its_blob_downloads_and_is_committed_only_at_the_end(images, lying_registry, repo):
    images.allow_insecure(lying_registry.host)
    layer = many_files_layer()
    image = build_busybox_image([layer])
    push(images.registry, f"{repo}:v1", image)
    release = lying_registry.hold_blob(layer.digest, after_bytes=layer.size * 6 // 10)
    ref = f"{lying_registry.host}/{repo}:v1"
    pulled: list[str] = []
    errors: list[BaseException] = []

    def do_pull() -> None:
        try:
            pulled.append(pull(images, ref, timeout=120))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=do_pull)
    thread.start()
    try:
        # With 60 % of the blob sent, storaged is already writing the layer's first files...
        wait_for(lambda: len(unpacking(images)) >= FILES // 3, 60, "the unpack to start before the download ends")
        assert len(unpacking(images)) < FILES
        # ...and nothing of it is a layer yet.
        assert layer_key(image, -1) not in stored_layers(images)
    finally:
        release.set()
        thread.join()
    assert not errors, errors
    assert pulled == [image.config_digest]
    assert layer_key(image, -1) in stored_layers(images)
    stored = storaged_dir(images) / "layers" / layer_key(image, -1) / "diff" / "data"
    assert sorted(os.listdir(stored)) == [f"f{i:02d}" for i in range(FILES)]
    assert not list((storaged_dir(images) / "layers").glob(".tmp-*"))
    assert incoming(images) == []
    remove(images, ref)


def test_a_blob_with_the_right_content_but_the_wrong_digest_is_never_stored(images, lying_registry, repo):
    """Its layer decompresses to the diff_id, so only imaged's digest check can refuse it:
    storaged must wait for that verdict before committing what it unpacked."""
    images.allow_insecure(lying_registry.host)
    layer = many_files_layer()
    image = build_busybox_image([layer])
    push(images.registry, f"{repo}:v1", image)
    # Same size, same uncompressed tar: only the gzip header's MTIME differs (RFC 1952 §2.3).
    impostor = layer.blob[:4] + b"\x01" + layer.blob[5:]
    lying_registry.serve_blob(layer.digest, impostor)
    err = pull_error(images, f"{lying_registry.host}/{repo}:v1", timeout=120)
    assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
    wait_for(lambda: not list((storaged_dir(images) / "layers").glob(".tmp-*")), 30, "the unpack to be dropped")
    assert layer_key(image, -1) not in stored_layers(images)
    impostor_name = layer.digest.split(":")[1][:12]
    assert [n for n in incoming(images) if impostor_name in n] == []


def test_an_imaged_killed_mid_stream_leaves_storaged_ready_for_the_next_pull(images, lying_registry, repo):
    """storaged is left following a download whose imaged is gone: the restarted imaged's pull
    resumes the download and is applied at once, not after the abandoned unpack's stall."""
    images.allow_insecure(lying_registry.host)
    layer = many_files_layer()
    image = build_busybox_image([layer])
    push(images.registry, f"{repo}:v1", image)
    release = lying_registry.hold_blob(layer.digest, after_bytes=layer.size // 2)
    ref = f"{lying_registry.host}/{repo}:v1"
    imaged_pid = images.run.daemon_pid("imaged")
    errors: list[BaseException] = []

    def do_pull() -> None:
        try:
            pull(images, ref, timeout=120)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=do_pull)
    thread.start()
    try:
        wait_for(lambda: len(unpacking(images)) >= 2, 60, "the unpack to start before the download ends")
        os.kill(imaged_pid, signal.SIGKILL)
    finally:
        release.set()
        thread.join()
    assert errors  # the pull in flight died with its imaged
    wait_for(lambda: images.run.daemon_pid("imaged") not in (0, imaged_pid), 20, "supervisord to restart imaged")
    wait_for(images.run.ready, 30, "the runtime to be ready again")
    started = time.monotonic()
    assert pull(images, ref, timeout=120) == image.config_digest
    assert time.monotonic() - started < 30  # the orphaned unpack's stall is 60 s
    ranges = [r.headers.get("range", "") for r in lying_registry.requests_for("blobs", layer.digest)]
    assert any(r.startswith("bytes=") for r in ranges), ranges  # resumed, not fetched again
    assert layer_key(image, -1) in stored_layers(images)
    assert not list((storaged_dir(images) / "layers").glob(".tmp-*"))
    assert incoming(images) == []
    remove(images, ref)
