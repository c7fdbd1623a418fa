"""The distribution client: auth handshake, retries, resume and verification (httpx.MockTransport)."""

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from services.imaged.auth import Credentials, TokenCache
from services.imaged.connections import Connection
from services.imaged.distribution import RegistryClient, registry_error
from services.imaged.manifest import OCI_MANIFEST, Descriptor
from shared.errors import (
    DataLoss,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

BLOB = bytes(range(256)) * 64  # 16 KiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
LAYER = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", BLOB_DIGEST, len(BLOB))
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class Body(httpx.AsyncByteStream):
    """A streamed body, as real transports give (httpx reads `content=` bodies eagerly)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.data), 4096):
            yield self.data[i:i + 4096]


def reply(status: int, body: bytes = b"", headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, stream=Body(body), headers=headers or {})


class Broken(httpx.AsyncByteStream):
    """A body that sends `data` and then loses the connection."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset by peer")


def client_for(handler, creds=None, retries=3):
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    conn = Connection("reg.test", False, http, scheme="https")
    return RegistryClient(conn, "ns/app", creds, TokenCache(), http, retries, sleep=sleep), sleeps


def errors_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def run(coro):
    return asyncio.run(coro)


def test_bearer_challenge_gets_a_token_once_and_reuses_it():
    seen = {"token": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            seen["token"] += 1
            assert request.url.params["scope"] == "repository:ns/app:pull"
            assert request.url.params["service"] == "reg.test"
            assert request.headers["Authorization"].startswith("Basic ")
            return reply(200, json.dumps({"token": "T1", "expires_in": 300}).encode())
        if request.headers.get("Authorization") != "Bearer T1":
            return reply(401, b"", {"WWW-Authenticate": 'Bearer realm="https://auth.test/token",service="reg.test"'})
        return reply(200, MANIFEST, {"Content-Type": OCI_MANIFEST})

    client, _ = client_for(handler, Credentials("alice", "pw"))

    async def scenario():
        first = await client.manifest("v1")
        second = await client.manifest(MANIFEST_DIGEST)
        return first, second

    first, second = run(scenario())
    assert first.digest == second.digest == MANIFEST_DIGEST
    assert first.media_type == OCI_MANIFEST
    assert seen["token"] == 1


def test_basic_challenge_uses_the_credentials():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Basic YTpi":
            return reply(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
        return reply(200, MANIFEST)

    client, _ = client_for(handler, Credentials("a", "b"))
    assert run(client.manifest("v1")).digest == MANIFEST_DIGEST


def test_still_unauthorized_after_auth_is_unauthenticated_with_the_registry_message():
    def handler(request: httpx.Request) -> httpx.Response:
        return reply(401, errors_body("UNAUTHORIZED", "authentication required"),
                     {"WWW-Authenticate": 'Basic realm="r"'})

    client, _ = client_for(handler, Credentials("a", "wrong"))
    with pytest.raises(Unauthenticated, match="authentication required"):
        run(client.manifest("v1"))


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (404, "MANIFEST_UNKNOWN", NotFound),
        (404, "NAME_UNKNOWN", NotFound),
        (403, "DENIED", PermissionDenied),
        (401, "UNAUTHORIZED", Unauthenticated),
        (429, "TOOMANYREQUESTS", ResourceExhausted),
        (503, "UNAVAILABLE", Unavailable),
        (418, "", FailedPrecondition),
    ],
)
def test_registry_errors_map_to_criplex_errors(status, code, error):
    err = registry_error(status, errors_body(code, "the registry says so"), "manifest x")
    assert isinstance(err, error)
    assert "the registry says so" in err.message


def test_transient_statuses_are_retried_with_backoff_and_retry_after():
    answers = [reply(503), reply(429, b"", {"Retry-After": "2"}), reply(200, MANIFEST)]

    client, sleeps = client_for(lambda request: answers.pop(0))
    assert run(client.manifest("v1")).digest == MANIFEST_DIGEST
    assert len(sleeps) == 2 and sleeps[1] == 2.0


def test_connection_errors_are_retried_then_reported_unavailable():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("connection refused")

    client, sleeps = client_for(handler, retries=2)
    with pytest.raises(Unavailable, match=r"cannot reach reg\.test"):
        run(client.manifest("v1"))
    assert len(calls) == 3 and len(sleeps) == 2


def test_not_found_is_not_retried():
    calls = []

    def handler(request):
        calls.append(1)
        return reply(404, errors_body("MANIFEST_UNKNOWN", "manifest unknown"))

    client, _ = client_for(handler)
    with pytest.raises(NotFound, match="manifest unknown"):
        run(client.manifest("v1"))
    assert len(calls) == 1


def test_manifest_by_digest_is_verified():
    client, _ = client_for(lambda r: reply(200, MANIFEST + b" "))
    with pytest.raises(DataLoss, match="does not match"):
        run(client.manifest(MANIFEST_DIGEST))


def test_schema1_manifest_is_refused():
    body = json.dumps({"schemaVersion": 1, "fsLayers": []}).encode()
    client, _ = client_for(lambda r: reply(200, body))
    with pytest.raises(FailedPrecondition, match="schema 1"):
        run(client.manifest("v1"))


def test_oversized_manifest_is_refused():
    client, _ = client_for(lambda r: reply(200, b" " * (4 * 1024 * 1024 + 1)))
    with pytest.raises(FailedPrecondition, match="larger than"):
        run(client.manifest("v1"))


def test_interrupted_download_resumes_with_range(tmp_path):
    ranges = []
    cut = 5000

    def handler(request):
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            return httpx.Response(200, stream=Broken(BLOB[:cut]))
        assert request.headers["Range"] == f"bytes={cut}-"
        return reply(206, BLOB[cut:], {"Content-Range": f"bytes {cut}-{len(BLOB) - 1}/{len(BLOB)}"})

    client, _ = client_for(handler)
    progress = []
    run(client.download(LAYER, tmp_path / "blob", progress.append))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert ranges == [None, f"bytes={cut}-"]
    assert sum(progress) == len(BLOB)


def test_registry_ignoring_range_restarts_the_file(tmp_path):
    answers = [httpx.Response(200, stream=Broken(BLOB[:100])), reply(200, BLOB)]
    client, _ = client_for(lambda r: answers.pop(0))
    progress = []
    run(client.download(LAYER, tmp_path / "blob", progress.append))
    assert (tmp_path / "blob").read_bytes() == BLOB
    assert sum(progress) == len(BLOB)


def test_corrupt_blob_is_data_loss(tmp_path):
    bad = bytes(reversed(BLOB))
    client, _ = client_for(lambda r: reply(200, bad))
    with pytest.raises(DataLoss, match="expected"):
        run(client.download(LAYER, tmp_path / "blob", lambda n: None))


def test_blob_larger_than_its_descriptor_is_cut_off(tmp_path):
    client, _ = client_for(lambda r: reply(200, BLOB + b"more"))
    with pytest.raises(DataLoss, match="more than"):
        run(client.download(LAYER, tmp_path / "blob", lambda n: None))


def test_blob_bytes_are_verified_raw_even_with_a_content_encoding(tmp_path):
    # The registry (or a proxy) labels the gzip layer as gzip-encoded: it must not be decoded.
    client, _ = client_for(lambda r: reply(200, BLOB, {"Content-Encoding": "gzip"}))
    run(client.download(LAYER, tmp_path / "blob", lambda n: None))
    assert (tmp_path / "blob").read_bytes() == BLOB
