"""The distribution client against a real registry (Debian's docker-registry, distribution v2.8)."""

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from services.imaged.auth import TokenCache
from services.imaged.connections import ConnectionPool
from services.imaged.distribution import RegistryClient
from services.imaged.manifest import OCI_MANIFEST, ImageManifest, parse_image_config, parse_manifest
from shared.errors import NotFound

REGISTRY = Path("/usr/bin/docker-registry")
LAYER = os.urandom(300_000)  # incompressible, so it spans many reads
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if not REGISTRY.exists():
        pytest.skip("docker-registry is not installed")
    root = tmp_path_factory.mktemp("registry")
    host = f"127.0.0.1:{free_port()}"
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: {host}\n")
    proc = subprocess.Popen([str(REGISTRY), "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://{host}/v2/").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("docker-registry did not start")
            time.sleep(0.1)
        yield host
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def push(host: str, repo: str, tag: str) -> tuple[bytes, str]:
    with httpx.Client(base_url=f"http://{host}") as http:
        for blob in (LAYER, CONFIG):
            start = http.post(f"/v2/{repo}/blobs/uploads/")
            assert start.status_code == 202, start.text
            # Location carries the upload's own query (_state=...); the digest is added to it.
            location = httpx.URL(start.headers["Location"])
            done = http.put(location.copy_merge_params({"digest": sha256(blob)}), content=blob)
            assert done.status_code == 201, done.text
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(CONFIG),
                       "size": len(CONFIG)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(LAYER),
                        "size": len(LAYER)}],
        }).encode()
        put = http.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
                       headers={"Content-Type": OCI_MANIFEST})
        assert put.status_code == 201, put.text
    return manifest, sha256(manifest)


def test_pull_manifest_config_and_layer_from_a_real_registry(registry, tmp_path):
    body, digest = push(registry, "criplex/imaged-test", "v1")

    async def scenario():
        pool = ConnectionPool(tmp_path / "certs.d")
        try:
            # Insecure: the registry speaks plain HTTP, which the client must discover on its own.
            client = RegistryClient(pool.get(registry, True), "criplex/imaged-test", None, TokenCache(),
                                    pool.auth_http, retries=1)
            by_tag = await client.manifest("v1")
            by_digest = await client.manifest(digest)
            manifest = parse_manifest(by_tag.body, by_tag.media_type)
            assert isinstance(manifest, ImageManifest)
            config = await client.blob(manifest.config)
            progress: list[int] = []
            await client.download(manifest.layers[0], tmp_path / "layer", progress.append)
            with pytest.raises(NotFound, match="manifest unknown"):
                await client.manifest("no-such-tag")
            return by_tag, by_digest, config, progress, client.connection.scheme
        finally:
            await pool.aclose()

    by_tag, by_digest, config, progress, scheme = asyncio.run(scenario())
    assert scheme == "http"
    assert by_tag.body == body and by_tag.digest == digest == by_digest.digest
    assert parse_image_config(config).platform == "linux/amd64"
    assert (tmp_path / "layer").read_bytes() == LAYER
    assert sum(progress) == len(LAYER)
