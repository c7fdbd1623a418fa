"""The test helpers themselves, against a real docker-registry: if these fail, trust no image test."""

from __future__ import annotations

import io
import json
import os
import ssl
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.hostile import CANARY_CONTENT, HOSTILE_LAYERS, PAYLOAD, snapshot
from tests.support.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MARKER_PATH,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_SIGNED_MANIFEST,
    WHITEOUT_ABSENT,
    WHITEOUT_PRESENT,
    build_busybox_image,
    build_multiarch_busybox,
    build_whiteout_image,
)
from tests.support.layers import Compression, decompress, random_layer, sha256_digest
from tests.support.lying_registry import LyingRegistry
from tests.support.push import fetch_schema1, push, push_index, push_schema1
from tests.support.registry import Registry

if TYPE_CHECKING:
    from tests.support.fixtures import PushedImage

# Until tests/conftest.py lists it; importing the module here instead would bypass
# pytest's assertion rewriting of it.

V2_ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST])


def tar_members(blob: bytes, compression: Compression) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(decompress(blob, compression))) as tar:
        return {member.name: member for member in tar.getmembers()}


def get_blob(client: httpx.Client, name: str, digest: str) -> bytes:
    response = client.get(f"/v2/{name}/blobs/{digest}")
    assert response.status_code == 200, response.text
    return response.content


# --- registry + push ---------------------------------------------------------------------


def test_pushed_busybox_manifest_comes_back_byte_identical(registry: Registry, pushed_busybox: PushedImage):
    image = pushed_busybox.image
    with registry.client() as client:
        response = client.get(f"/v2/{pushed_busybox.name}/manifests/latest", headers={"Accept": V2_ACCEPT})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == pushed_busybox.digest == image.manifest_digest
        assert response.content == image.manifest
        by_digest = client.get(
            f"/v2/{pushed_busybox.name}/manifests/{pushed_busybox.digest}", headers={"Accept": OCI_MANIFEST}
        )
        assert by_digest.content == image.manifest
        config = json.loads(get_blob(client, pushed_busybox.name, image.config_digest))
        layer = get_blob(client, pushed_busybox.name, image.layers[0].digest)
    assert sha256_digest(layer) == image.layers[0].digest
    assert config["rootfs"]["diff_ids"] == [sha256_digest(decompress(layer, "gzip"))]
    members = tar_members(layer, "gzip")
    assert members["bin/busybox"].size == Path("/bin/busybox").stat().st_size
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].mode == 0o1777


def test_image_config_carries_runtime_settings(registry: Registry, repo: str):
    image = build_busybox_image(
        user="1000", env=["A=1"], entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], working_dir="/home/app",
        labels={"org.criplex.test": "yes"}, stop_signal="SIGINT",
    )  # fmt: skip
    push(registry, f"{repo}:v1", image)
    with registry.client() as client:
        config = json.loads(get_blob(client, repo, image.config_digest))
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"] == {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "User": "1000",
        "WorkingDir": "/home/app",
        "Labels": {"org.criplex.test": "yes"},
        "StopSignal": "SIGINT",
    }


@pytest.mark.parametrize(
    ("compression", "manifest_format", "layer_type"),
    [
        ("gzip", "oci", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "oci", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("none", "oci", "application/vnd.oci.image.layer.v1.tar"),
        ("gzip", "docker", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ],
)
def test_every_compression_and_format_round_trips(
    registry: Registry, repo: str, compression, manifest_format, layer_type
):
    image = build_busybox_image(compression=compression, manifest_format=manifest_format, marker="m")
    push(registry, f"{repo}:latest", image)
    with registry.client() as client:
        manifest = client.get(f"/v2/{repo}/manifests/latest", headers={"Accept": V2_ACCEPT})
        assert manifest.headers["Content-Type"] == image.manifest_media_type
        document = json.loads(manifest.content)
        assert [layer["mediaType"] for layer in document["layers"]] == [layer_type, layer_type]
        marker = get_blob(client, repo, image.layers[1].digest)
    assert sha256_digest(decompress(marker, compression)) == image.layers[1].diff_id
    assert "etc/criplex-marker" in tar_members(marker, compression)


def test_builds_are_reproducible():
    assert (
        build_busybox_image(compression="zstd").manifest_digest
        == build_busybox_image(compression="zstd").manifest_digest
    )
    assert build_multiarch_busybox().digest == build_multiarch_busybox().digest


def test_docker_manifests_refuse_zstd_layers():
    with pytest.raises(ValueError, match="zstd"):
        build_busybox_image(compression="zstd", manifest_format="docker")


def test_second_push_skips_existing_blobs(registry: Registry, repo: str):
    image = build_busybox_image(marker="twice")
    push(registry, f"{repo}:a", image)
    with LyingRegistry(registry) as proxy:
        push(proxy, f"{repo}:b", image)
        uploads = [r for r in proxy.requests if r.method in ("POST", "PUT", "PATCH") and "/blobs/" in r.path]
    assert uploads == []


def test_push_follows_relative_upload_locations():
    with Registry(relative_urls=True) as relative:
        with relative.client() as client:
            started = client.post("/v2/criplex-test/relative/blobs/uploads/")
        assert started.headers["Location"].startswith("/v2/")
        image = build_busybox_image()
        assert push(relative, "criplex-test/relative:v1", image) == image.manifest_digest


# --- auth and TLS --------------------------------------------------------------------------


def test_basic_auth_registry_rejects_anonymous_and_accepts_credentials(auth_registry: Registry, repo: str):
    with auth_registry.client(auth=False) as anonymous:
        ping = anonymous.get("/v2/")
        assert ping.status_code == 401
        assert ping.headers["WWW-Authenticate"].startswith("Basic ")
    assert auth_registry.auth is not None
    wrong = httpx.get(f"{auth_registry.url}/v2/", auth=(auth_registry.auth.username, "wrong"))
    assert wrong.status_code == 401
    digest = push(auth_registry, f"{repo}:v1", build_busybox_image())
    with auth_registry.client() as client:
        assert client.get("/v2/").status_code == 200
        assert client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}).status_code == 200
    with auth_registry.client(auth=False) as anonymous:
        assert anonymous.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}).status_code == 401


def test_tls_registry_is_trusted_only_through_its_ca(tls_registry: Registry, tmp_path: Path):
    assert tls_registry.url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_registry.url}/v2/")
    strict = ssl.create_default_context(cafile=str(tls_registry.write_certs_d(tmp_path) / "ca.crt"))
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    assert httpx.get(f"{tls_registry.url}/v2/", verify=strict).status_code == 200
    assert sorted(os.listdir(tmp_path / tls_registry.host)) == ["ca.crt"]


def test_mtls_registry_demands_the_client_certificate(mtls_registry: Registry, tmp_path: Path):
    host_dir = mtls_registry.write_certs_d(tmp_path)
    assert sorted(os.listdir(host_dir)) == ["ca.crt", "client.cert", "client.key"]
    context = ssl.create_default_context(cafile=str(host_dir / "ca.crt"))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{mtls_registry.url}/v2/", verify=context)
    context.load_cert_chain(str(host_dir / "client.cert"), str(host_dir / "client.key"))
    assert httpx.get(f"{mtls_registry.url}/v2/", verify=context).status_code == 200


def test_stop_kills_the_registry_and_removes_its_files():
    registry = Registry()
    pid, workdir = registry.pid, registry.workdir
    assert (workdir / "storage").is_dir()
    registry.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()
    registry.stop()  # idempotent


# --- multi-arch, whiteouts, schema1, random layers -------------------------------------------


@pytest.mark.parametrize("manifest_format", ["oci", "docker"])
def test_index_push_serves_both_platforms(registry: Registry, repo: str, manifest_format):
    index = build_multiarch_busybox(manifest_format=manifest_format)
    assert push_index(registry, f"{repo}:multi", index) == index.digest
    with registry.client() as client:
        response = client.get(f"/v2/{repo}/manifests/multi", headers={"Accept": V2_ACCEPT})
        assert response.headers["Content-Type"] == index.media_type
        entries = json.loads(response.content)["manifests"]
        assert [entry["platform"] for entry in entries] == [
            {"architecture": "amd64", "os": "linux"},
            {"architecture": "arm64", "os": "linux", "variant": "v8"},
        ]
        markers = []
        for entry, image in zip(entries, index.images, strict=True):
            manifest = client.get(f"/v2/{repo}/manifests/{entry['digest']}", headers={"Accept": entry["mediaType"]})
            assert manifest.content == image.manifest
            marker_layer = get_blob(client, repo, image.layers[1].digest)
            with tarfile.open(fileobj=io.BytesIO(decompress(marker_layer, "gzip"))) as tar:
                markers.append(tar.extractfile(MARKER_PATH.lstrip("/")).read())  # type: ignore[union-attr]
    assert markers == [b"amd64\n", b"arm64\n"]
    assert index.images[0].layers[0].digest == index.images[1].layers[0].digest  # shared base


def test_whiteout_image_layers_carry_whiteout_and_opaque_markers():
    image = build_whiteout_image()
    upper = tar_members(image.layers[-1].blob, "gzip")
    assert {"data/.wh.gone", "data/.wh.gone-dir", "opq/.wh..wh..opq", "opq/new"} <= set(upper)
    lower = tar_members(image.layers[-2].blob, "gzip")
    assert {path.lstrip("/") for path in WHITEOUT_ABSENT} & set(lower)
    assert all(path.lstrip("/") in set(lower) | set(upper) for path in WHITEOUT_PRESENT)


def test_schema1_is_stored_and_served_to_v2_clients(schema1_registry: Registry, repo: str):
    image = build_busybox_image(manifest_format="docker")
    digest = push_schema1(schema1_registry, f"{repo}:old", image)
    with schema1_registry.client() as client:
        response = client.get(f"/v2/{repo}/manifests/old", headers={"Accept": V2_ACCEPT})
    assert response.headers["Content-Type"] == SCHEMA1_SIGNED_MANIFEST
    assert response.headers["Docker-Content-Digest"] == digest
    assert json.loads(response.content)["schemaVersion"] == 1


def test_default_registry_renders_schema1_on_request(registry: Registry, repo: str):
    push(registry, f"{repo}:v1", build_busybox_image(manifest_format="docker"))
    document = json.loads(fetch_schema1(registry, f"{repo}:v1"))
    assert document["schemaVersion"] == 1 and document["signatures"]


def test_random_layer_is_incompressible_and_seeded():
    layer = random_layer(256 * 1024, seed=7)
    assert layer.size > 256 * 1024
    assert layer.digest == random_layer(256 * 1024, seed=7).digest != random_layer(256 * 1024, seed=8).digest
    assert tar_members(layer.blob, "gzip")["data/random.bin"].size == 256 * 1024


# --- the lying proxy -----------------------------------------------------------------------


def test_proxy_forwards_pushes_and_pulls_untouched(lying_registry: LyingRegistry, repo: str):
    image = build_busybox_image(marker="proxied")
    assert push(lying_registry, f"{repo}:v1", image) == image.manifest_digest
    with lying_registry.client() as client:
        for digest, data in image.blobs():
            assert get_blob(client, repo, digest) == data
        head = client.head(f"/v2/{repo}/blobs/{image.layers[0].digest}")
        assert int(head.headers["Content-Length"]) == image.layers[0].size
    assert all(r.fault is None for r in lying_registry.requests)


def test_proxy_corrupts_a_blob_keeping_its_length(lying_registry: LyingRegistry, repo: str):
    image = build_busybox_image(marker="corrupt")
    push(lying_registry, f"{repo}:v1", image)
    target = image.layers[1]
    lying_registry.corrupt_blob(target.digest, times=1)
    with lying_registry.client() as client:
        bad = get_blob(client, repo, target.digest)
        good = get_blob(client, repo, target.digest)
    assert len(bad) == target.size and sha256_digest(bad) != target.digest
    assert good == target.blob
    assert [r.fault for r in lying_registry.requests_for("blobs", target.digest)] == ["corrupt", None]


def test_proxy_fails_first_requests_with_503(lying_registry: LyingRegistry, repo: str):
    image = build_busybox_image(marker="flaky")
    push(lying_registry, f"{repo}:v1", image)
    digest = image.layers[1].digest
    lying_registry.fail_blob(digest, times=2, retry_after=1)
    with lying_registry.client() as client:
        statuses = [client.get(f"/v2/{repo}/blobs/{digest}") for _ in range(3)]
    assert [r.status_code for r in statuses] == [503, 503, 200]
    assert statuses[0].headers["Retry-After"] == "1"
    assert statuses[2].content == image.layers[1].blob


def test_proxy_cuts_a_blob_and_range_resumes_it(lying_registry: LyingRegistry, repo: str):
    image = build_busybox_image(marker="cut")
    push(lying_registry, f"{repo}:v1", image)
    layer = image.layers[0]  # ~1 MB, so the cut lands well inside the body
    lying_registry.cut_blob(layer.digest, after_bytes=100_000)
    received = bytearray()
    with lying_registry.client() as client:
        with (
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("GET", f"/v2/{repo}/blobs/{layer.digest}") as response,
        ):
            assert int(response.headers["Content-Length"]) == layer.size
            for chunk in response.iter_raw():
                received += chunk
        assert len(received) == 100_000
        rest = client.get(f"/v2/{repo}/blobs/{layer.digest}", headers={"Range": f"bytes={len(received)}-"})
    assert rest.status_code == 206
    assert sha256_digest(bytes(received) + rest.content) == layer.digest
    ranges = [r.headers.get("range") for r in lying_registry.requests_for("blobs", layer.digest)]
    assert ranges == [None, "bytes=100000-"]


def test_proxy_serves_a_wrong_manifest_and_lying_digest(lying_registry: LyingRegistry, repo: str):
    real = build_busybox_image(marker="real")
    other = build_busybox_image(marker="other")
    push(lying_registry, f"{repo}:v1", real)
    lying_registry.serve_manifest(repo, real.manifest_digest, other.manifest, OCI_MANIFEST)
    lying_registry.serve_manifest(repo, "v1", other.manifest, OCI_MANIFEST, digest_header=real.manifest_digest)
    with lying_registry.client() as client:
        by_digest = client.get(f"/v2/{repo}/manifests/{real.manifest_digest}", headers={"Accept": OCI_MANIFEST})
        by_tag = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        head = client.head(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert by_digest.content == other.manifest
    assert by_digest.headers["Docker-Content-Digest"] == other.manifest_digest
    assert by_tag.content == other.manifest and by_tag.headers["Docker-Content-Digest"] == real.manifest_digest
    assert head.content == b"" and int(head.headers["Content-Length"]) == len(other.manifest)


def test_proxy_fails_a_manifest_then_forwards(lying_registry: LyingRegistry, repo: str):
    image = build_busybox_image()
    push(lying_registry, f"{repo}:v1", image)
    lying_registry.fail_manifest(repo, "v1", times=1, status=500)
    with lying_registry.client() as client:
        first = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
        second = client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert (first.status_code, second.status_code) == (500, 200)
    assert second.content == image.manifest


def test_proxy_passes_basic_auth_through(auth_registry: Registry, repo: str):
    with LyingRegistry(auth_registry) as proxy:
        image = build_busybox_image()
        assert push(proxy, f"{repo}:v1", image) == image.manifest_digest
        with proxy.client(auth=False) as anonymous:
            assert anonymous.get("/v2/").status_code == 401


def test_proxy_fronts_a_tls_registry(tls_registry: Registry, repo: str):
    with LyingRegistry(tls_registry) as proxy:
        image = build_busybox_image()
        assert push(proxy, f"{repo}:v1", image) == image.manifest_digest
        with proxy.client() as client:
            assert get_blob(client, repo, image.layers[0].digest) == image.layers[0].blob


# --- hostile layers -------------------------------------------------------------------------

# Python's tarfile with filter="fully_trusted" is the naive extractor; these three it
# happens to resist (forward hardlink: KeyError; dir->symlink: it fails to replace the
# directory; NUL: ValueError), so for them we check the entries are as designed instead.
NAIVE_TARFILE_RESISTS = {"hardlink_forward_reference", "dir_replaced_by_symlink", "nul_in_name"}


@pytest.mark.parametrize("name", sorted(HOSTILE_LAYERS))
def test_hostile_layer_really_attacks_the_canary(name: str, canary: Path, tmp_path: Path):
    tar_bytes = HOSTILE_LAYERS[name](canary)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
    assert members[-1].isfile() and members[-1].size == len(PAYLOAD)
    if name in NAIVE_TARFILE_RESISTS:
        kinds = [(m.name, m.type) for m in members]
        if name == "nul_in_name":
            assert "\x00" in members[-1].name and members[-1].name.endswith("canary\x00.txt")
        elif name == "hardlink_forward_reference":
            assert kinds[1:] == [
                ("etc/early", tarfile.LNKTYPE),
                ("etc/later", tarfile.SYMTYPE),
                ("etc/early", tarfile.REGTYPE),
            ]
        else:
            assert kinds == [
                ("data", tarfile.DIRTYPE),
                ("data/ok", tarfile.REGTYPE),
                ("data", tarfile.SYMTYPE),
                ("data/canary", tarfile.REGTYPE),
            ]
        return
    before = snapshot(canary.parent)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        tar.extractall(rootfs, filter="fully_trusted")
    assert snapshot(canary.parent) != before
    assert canary.read_bytes() in (PAYLOAD, CANARY_CONTENT)  # written, or hardlinked (nlink rose)
