"""What a pull records: names, size, user, pause pinning; how failures at several sources read."""

import json
from types import SimpleNamespace

from services.imaged.manifest import OCI_MANIFEST, Descriptor, ImageConfig, ImageManifest, chain_ids
from services.imaged.pull import _pause_names, compose_record
from services.imaged.reference import normalize
from services.imaged.resolve import _combined
from services.imaged.service import verbose_info
from shared.errors import NotFound, PermissionDenied, Unavailable

CONFIG_DIGEST = "sha256:" + "c" * 64
INDEX_DIGEST = "sha256:" + "d" * 64
MANIFEST_DIGEST = "sha256:" + "e" * 64
DIFF = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)


def resolved(name: str, user: str = "") -> SimpleNamespace:
    manifest = ImageManifest(
        OCI_MANIFEST,
        Descriptor("application/vnd.oci.image.config.v1+json", CONFIG_DIGEST, 100),
        (Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 1000),
         Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "b" * 64, 20)),
    )
    config = ImageConfig(diff_ids=DIFF, platform="linux/amd64", user=user, env=("A=1",), cmd=("sh",))
    return SimpleNamespace(name=normalize(name), manifest=manifest, config=config, top_digest=INDEX_DIGEST,
                           manifest_digest=MANIFEST_DIGEST)


def test_record_of_a_tag_pull():
    rec = compose_record(resolved("quay.io/app:v1", user="1000:1000"), chain_ids(DIFF))
    assert rec.id == rec.config_digest == CONFIG_DIGEST
    assert rec.repo_tags == ("quay.io/app:v1",)
    assert rec.repo_digests == (f"quay.io/app@{INDEX_DIGEST}",)  # what the name resolved to
    assert rec.manifest_digest == MANIFEST_DIGEST  # the platform's manifest
    assert rec.size == 1000 + 20 + 100
    assert (rec.uid, rec.username, rec.user) == (1000, "", "1000:1000")
    assert rec.chain_ids == chain_ids(DIFF) and rec.diff_ids == DIFF
    assert (rec.env, rec.cmd, rec.platform) == (("A=1",), ("sh",), "linux/amd64")


def test_tag_and_digest_pull_records_no_tag():
    rec = compose_record(resolved(f"quay.io/app:v1@{INDEX_DIGEST}", user="nginx"), chain_ids(DIFF))
    assert rec.repo_tags == ()
    assert (rec.uid, rec.username) == (None, "nginx")


def test_pause_names():
    assert _pause_names("registry.k8s.io/pause:3.9") == ("registry.k8s.io/pause:3.9",)
    assert _pause_names("pause") == ("docker.io/library/pause:latest",)
    assert _pause_names(f"registry.k8s.io/pause@{INDEX_DIGEST}") == (f"registry.k8s.io/pause@{INDEX_DIGEST}",)
    assert _pause_names("Not A Reference") == ()


def test_one_failure_is_reported_as_is():
    err = NotFound("manifest unknown")
    assert _combined("x", [("a.io/x:latest", err)]) is err


def test_several_failures_keep_the_last_kind_and_every_reason():
    err = _combined("busybox", [("m.local/library/busybox:latest (mirror)", Unavailable("refused")),
                                ("docker.io/library/busybox:latest", PermissionDenied("denied"))])
    assert isinstance(err, PermissionDenied)
    assert "(mirror): refused" in err.message and "denied" in err.message


def test_verbose_info_is_one_json_document():
    rec = compose_record(resolved("quay.io/app:v1"), chain_ids(DIFF))
    info = json.loads(verbose_info(rec)["info"])
    assert info["chainIDs"] == list(rec.chain_ids)
    assert info["layers"][1] == {"diffID": DIFF[1], "chainID": rec.chain_ids[1]}
    assert info["manifestDigest"] == MANIFEST_DIGEST and info["config"]["Cmd"] == ["sh"]
