"""Registries that lie, hostile layers, daemons that die: clear errors, nothing corrupted or lost."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import grpc
import pytest

from shared.config import load_config
from shared.schema.storaged import CREATE_ROOTFS, REMOVE_ROOTFS, CreateRootfsRequest, RemoveRootfsRequest
from shared.tracing import Tracing
from shared.transport import DaemonClient
from tests.images.test_image_service import list_images, pull, pull_error, remove, status
from tests.support.hostile import HOSTILE_LAYERS, plant_canary, snapshot
from tests.support.images import WHITEOUT_ABSENT, WHITEOUT_PRESENT, build_busybox_image, build_whiteout_image
from tests.support.layers import files_layer, random_layer
from tests.support.push import push, push_schema1
from tests.support.runtime import wait_for


def storaged_dir(images):
    return images.run.state_dir / "storaged"


def stored_layers(images) -> set[str]:
    layers = storaged_dir(images) / "layers"
    return {p.name for p in layers.iterdir() if not p.name.startswith(".")} if layers.exists() else set()


def incoming(images) -> list[str]:
    path = storaged_dir(images) / "incoming"
    return os.listdir(path) if path.exists() else []


def test_corrupted_blob_fails_the_pull_and_stores_nothing(images, lying_registry, repo):
    images.allow_insecure(lying_registry.host)
    image = build_busybox_image([random_layer(500_000, seed=1234)])
    push(images.registry, f"{repo}:v1", image)
    lying_registry.corrupt_blob(image.layers[-1].digest)
    before = stored_layers(images)
    err = pull_error(images, f"{lying_registry.host}/{repo}:v1")
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "hashing to" in err.details()
    time.sleep(0.3)
    assert image.config_digest not in {i.id for i in list_images(images)}
    # The untouched base layer may be stored; the corrupted one never is, nor any file of it. A
    # download of the base the failure cancelled may stay partial, for its next pull to resume.
    new = stored_layers(images) - before
    assert len(new) <= len(image.layers) - 1
    corrupted = image.layers[-1].digest.split(":")[1][:12]
    assert [n for n in incoming(images) if corrupted in n or not n.endswith(".partial")] == []


def test_transient_errors_and_a_cut_blob_are_retried_and_resumed(images, lying_registry, repo):
    images.allow_insecure(lying_registry.host)
    image = build_busybox_image([random_layer(1_000_000, seed=4321)])
    push(images.registry, f"{repo}:v1", image)
    big = image.layers[-1].digest
    lying_registry.fail_blob(big, times=2, status=503)
    lying_registry.cut_blob(big, after_bytes=300_000)
    assert pull(images, f"{lying_registry.host}/{repo}:v1") == image.config_digest
    ranged = [r for r in lying_registry.requests_for("blobs", big) if "range" in r.headers]
    assert ranged, "a cut download must resume with a Range request"


def test_schema1_manifest_is_refused_clearly(images, schema1_registry, repo):
    images.allow_insecure(schema1_registry.host)
    push_schema1(schema1_registry, f"{repo}:old", build_busybox_image(manifest_format="docker"))
    err = pull_error(images, f"{schema1_registry.host}/{repo}:old")
    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert "schema" in err.details().lower()


def test_tls_registry_trusted_through_certs_d(images, tls_registry, repo):
    image = build_busybox_image([files_layer({"/tls": b"1\n"})])
    push(tls_registry, f"{repo}:v1", image)
    ref = f"{tls_registry.host}/{repo}:v1"
    # Not trusted yet: the registry's CA is unknown.
    assert pull_error(images, ref).code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION,
                                              grpc.StatusCode.PERMISSION_DENIED)
    tls_registry.write_certs_d(images.registries_conf.parent / "certs.d")
    assert pull(images, ref) == image.config_digest


def test_registry_requiring_a_client_certificate_gets_the_one_in_certs_d(images, mtls_registry, repo):
    image = build_busybox_image([files_layer({"/mtls": b"1\n"})])
    push(mtls_registry, f"{repo}:v1", image)
    ref = f"{mtls_registry.host}/{repo}:v1"
    host_dir = mtls_registry.write_certs_d(images.registries_conf.parent / "certs.d")
    client_cert, client_key = (host_dir / "client.cert").read_bytes(), (host_dir / "client.key").read_bytes()
    # The CA alone: the registry ends the handshake for want of a client certificate.
    (host_dir / "client.cert").unlink()
    (host_dir / "client.key").unlink()
    err = pull_error(images, ref)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "client certificate" in err.details(), err.details()
    # A certificate without its key is a configuration error, named as one.
    (host_dir / "client.cert").write_bytes(client_cert)
    err = pull_error(images, ref)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "client.key" in err.details(), err.details()
    (host_dir / "client.key").write_bytes(client_key)
    assert pull(images, ref) == image.config_digest
    remove(images, ref)
    # Insecure (no verification of the registry) still presents the client certificate, and
    # without one the refusal is the same clear error, not a fall back to plain HTTP.
    images.allow_insecure(mtls_registry.host)
    (host_dir / "ca.crt").unlink()
    assert pull(images, ref) == image.config_digest
    remove(images, ref)
    (host_dir / "client.cert").unlink()
    (host_dir / "client.key").unlink()
    assert pull_error(images, ref).code() == grpc.StatusCode.UNAUTHENTICATED


# A later entry replacing a symlink the same layer made is plain tar semantics: the
# link is replaced by the file inside the layer (never written through), as GNU tar does.
REPLACES_ITS_OWN_SYMLINK = {"symlink_write_through", "relative_symlink_write_through"}


@pytest.mark.parametrize("kind", sorted(set(HOSTILE_LAYERS) - REPLACES_ITS_OWN_SYMLINK))
def test_hostile_layer_is_refused_and_the_host_untouched(images, repo, tmp_path, kind):
    canary = plant_canary(tmp_path / "outside")
    before_host = snapshot(canary.parent)
    image = build_busybox_image([HOSTILE_LAYERS[kind](canary)])
    push(images.registry, f"{repo}:evil", image)
    before = stored_layers(images)
    err = pull_error(images, f"{images.registry.host}/{repo}:evil")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert snapshot(canary.parent) == before_host
    assert len(stored_layers(images) - before) <= 1  # at most the harmless busybox base
    assert incoming(images) == []
    assert not [p for p in (storaged_dir(images) / "layers").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", sorted(REPLACES_ITS_OWN_SYMLINK))
def test_file_over_a_symlink_of_the_same_layer_replaces_the_link_not_the_target(images, repo, tmp_path, kind):
    canary = plant_canary(tmp_path / "outside")
    before_host = snapshot(canary.parent)
    image = build_busybox_image([HOSTILE_LAYERS[kind](canary)])
    push(images.registry, f"{repo}:evil", image)
    pull(images, f"{images.registry.host}/{repo}:evil")
    assert snapshot(canary.parent) == before_host
    top = max((storaged_dir(images) / "layers").iterdir(), key=lambda p: p.stat().st_mtime)
    evil = top / "diff" / "etc" / "evil"
    assert evil.is_file() and not evil.is_symlink()
    remove(images, f"{images.registry.host}/{repo}:evil")


def test_whiteouts_and_opaque_dirs_hide_lower_files_in_a_real_overlay(images, repo):
    image = build_whiteout_image()
    push(images.registry, f"{repo}:wh", image)
    pull(images, f"{images.registry.host}/{repo}:wh")
    config = load_config(str(images.run.config_file))

    async def check():
        client = DaemonClient("storaged", config, Tracing("test", config.tracing))
        try:
            rootfs = await client.call(CREATE_ROOTFS, CreateRootfsRequest("wh-test", status_chain(images, repo)), 30)
            root = rootfs.path
            for path, content in WHITEOUT_PRESENT.items():
                with open(root + path, "rb") as f:
                    assert f.read() == content
            for path in WHITEOUT_ABSENT:
                assert not os.path.lexists(root + path), path
            await client.call(REMOVE_ROOTFS, RemoveRootfsRequest("wh-test"), 30)
            assert not os.path.exists(root)
        finally:
            client.close()

    asyncio.run(check())


def status_chain(images, repo) -> str:
    import json

    info = json.loads(status(images, f"{images.registry.host}/{repo}:wh", verbose=True).info["info"])
    return info["chainIDs"][-1]


def test_kill_9_of_storaged_mid_unpack_then_restart_recovers(images, repo):
    image = build_busybox_image([random_layer(60_000_000, compression="gzip", seed=s) for s in range(2)])
    push(images.registry, f"{repo}:big", image)
    ref = f"{images.registry.host}/{repo}:big"
    storaged_pid = images.run.daemon_pid("storaged")
    errors: list[grpc.RpcError] = []

    def do_pull():
        try:
            pull(images, ref, timeout=120)
        except grpc.RpcError as exc:
            errors.append(exc)

    thread = threading.Thread(target=do_pull)
    thread.start()
    # Wait until storaged is unpacking (a temporary layer directory exists), then kill it.
    layers = storaged_dir(images) / "layers"
    wait_for(lambda: layers.exists() and any(p.name.startswith(".") for p in layers.iterdir()), 60,
             "storaged to start unpacking")
    os.kill(storaged_pid, signal.SIGKILL)
    thread.join()
    wait_for(lambda: images.run.daemon_pid("storaged") not in (0, storaged_pid), 20, "supervisord to restart storaged")
    wait_for(images.run.ready, 20, "the runtime to be ready again")
    # No partial layer is visible, leftovers are gone (a download the failure interrupted may
    # stay partial, for the next pull to resume), and the pull simply works now. The pull in
    # flight either failed clearly or, once storaged was back, applied its verified blobs.
    assert not [p for p in layers.iterdir() if p.name.startswith(".")]
    assert [n for n in incoming(images) if not n.endswith(".partial")] == []
    assert pull(images, ref, timeout=120) == image.config_digest
    assert incoming(images) == []
    assert not errors or errors[0].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                              grpc.StatusCode.INTERNAL, grpc.StatusCode.ABORTED)
    remove(images, ref)


@pytest.mark.parametrize("service", ["imaged", "storaged", "gateway", "netd", "monitord"])
def test_image_survives_a_daemon_restart_between_pull_and_status(images, repo, service):
    image = build_busybox_image([files_layer({"/survive": service.encode()})])
    push(images.registry, f"{repo}:v1", image)
    ref = f"{images.registry.host}/{repo}:v1"
    pull(images, ref)
    old = images.run.daemon_pid(service)
    images.run.supervisorctl("restart", service)
    wait_for(lambda: images.run.daemon_pid(service) != old, 20, f"{service} to restart")
    wait_for(images.run.ready, 20, "the runtime to be ready again")
    st = status(images, ref).image
    assert st.id == image.config_digest and ref in st.repo_tags
    # And its layers are still there: pulling again downloads nothing new.
    assert pull(images, ref) == image.config_digest
