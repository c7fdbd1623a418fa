"""Manifests, indexes, configs, platform choice and chain IDs."""

import json

import pytest

from services.imaged.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageIndex,
    ImageManifest,
    chain_ids,
    media_type_of,
    parse_image_config,
    parse_manifest,
    select_platform,
    user_ids,
)
from shared.errors import DataLoss, FailedPrecondition

A = "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"  # sha256("a")
B = "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d"  # sha256("b")
C = "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6"  # sha256("c")
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def test_chain_ids_follow_the_image_spec():
    # Computed independently with sha256sum: printf '%s %s' "$A" "$B" | sha256sum, then with C.
    assert chain_ids((A, B, C)) == (
        A,
        "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676",
        "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106",
    )
    assert chain_ids(()) == ()
    assert chain_ids([B]) == (B,)


def test_chain_id_depends_on_the_parent():
    assert chain_ids((A, C))[1] != chain_ids((B, C))[1]


def manifest_json(media_type=OCI_MANIFEST, layers=((GZ, A, 10),), config_type=CONFIG, **extra) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": B, "size": 5},
        "layers": [{"mediaType": t, "digest": d, "size": s} for t, d, s in layers],
        **extra,
    }
    return json.dumps(doc).encode()


def test_parse_oci_and_docker_manifests():
    for media_type, layer_type in ((OCI_MANIFEST, GZ),
                                   (DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.diff.tar.gzip")):
        m = parse_manifest(manifest_json(media_type, ((layer_type, A, 10),)), media_type)
        assert isinstance(m, ImageManifest)
        assert m.config.digest == B
        assert [(layer.digest, layer.size) for layer in m.layers] == [(A, 10)]


def test_media_type_comes_from_the_body_then_the_header():
    assert media_type_of(manifest_json(), "text/plain") == OCI_MANIFEST
    body = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert media_type_of(body, "") == OCI_INDEX


def test_schema1_is_refused_clearly():
    body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    with pytest.raises(FailedPrecondition, match="schema 1"):
        media_type_of(body, "application/vnd.docker.distribution.manifest.v1+prettyjws")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", DataLoss),
        (b"[]", DataLoss),
        (manifest_json(schemaVersion=3), DataLoss),
        (manifest_json(layers=((GZ, "sha256:short", 1),)), DataLoss),
        (manifest_json(layers=((GZ, A, -1),)), DataLoss),
        (manifest_json(layers=((GZ, A, 2**63),)), DataLoss),  # image-spec sizes are int64
        (manifest_json(layers=(("application/vnd.oci.image.layer.v1.tar+gzip+encrypted", A, 1),)),
         FailedPrecondition),
        (manifest_json(layers=(("application/x-weird", A, 1),)), FailedPrecondition),
        (manifest_json(config_type="application/vnd.cncf.helm.config.v1+json"), FailedPrecondition),
    ],
)
def test_bad_manifests_are_refused(body, error):
    with pytest.raises(error):
        parse_manifest(body, OCI_MANIFEST)


def index(*platforms: str, media_type=OCI_INDEX) -> ImageIndex:
    entries = []
    for i, p in enumerate(platforms):
        os_, arch, *variant = p.split("/")
        plat = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append({"mediaType": OCI_MANIFEST, "digest": "sha256:" + f"{i:064x}", "size": 1, "platform": plat})
    parsed = parse_manifest(json.dumps({"schemaVersion": 2, "manifests": entries}).encode(), media_type)
    assert isinstance(parsed, ImageIndex)
    return parsed


def test_select_platform_exact():
    idx = index("linux/arm64/v8", "linux/amd64", "windows/amd64")
    assert select_platform(idx, "linux/amd64").platform == "linux/amd64"
    assert select_platform(idx, "linux/arm64").platform == "linux/arm64/v8"


def test_select_platform_arm_variants_fall_back_to_older():
    idx = index("linux/arm/v5", "linux/arm/v6")
    assert select_platform(idx, "linux/arm/v7").platform == "linux/arm/v6"
    assert select_platform(index("linux/arm/v7", "linux/arm/v6"), "linux/arm").platform == "linux/arm/v7"
    with pytest.raises(FailedPrecondition):
        select_platform(index("linux/arm/v7"), "linux/arm/v6")


def test_select_platform_missing_lists_what_is_offered():
    with pytest.raises(FailedPrecondition, match=r"linux/s390x.*linux/amd64"):
        select_platform(index("linux/amd64", media_type=DOCKER_LIST), "linux/s390x")


def config_json(**overrides) -> bytes:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "rootfs": {"type": "layers", "diff_ids": [A, B]},
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/init"],
            "Cmd": ["serve"],
            "WorkingDir": "/srv",
            "Labels": {"a": "b"},
            "StopSignal": "SIGQUIT",
            "Volumes": {"/data": {}, "/cache": {}},
        },
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_parse_image_config_keeps_runtime_defaults():
    c = parse_image_config(config_json())
    assert c.diff_ids == (A, B)
    assert c.platform == "linux/amd64"
    assert (c.user, c.env, c.entrypoint, c.cmd) == ("1000:1000", ("PATH=/bin",), ("/init",), ("serve",))
    assert (c.working_dir, c.labels, c.stop_signal) == ("/srv", {"a": "b"}, "SIGQUIT")
    assert c.volumes == ("/cache", "/data")


def test_image_config_with_null_fields():
    c = parse_image_config(json.dumps({"rootfs": {"type": "layers", "diff_ids": [A]},
                                       "config": {"Env": None, "Labels": None}}).encode())
    assert (c.env, c.labels, c.cmd) == ((), {}, ())


@pytest.mark.parametrize(
    "body",
    [config_json(rootfs={"type": "tar", "diff_ids": []}), config_json(rootfs={"type": "layers",
     "diff_ids": ["x"]}), config_json(config={"Env": "PATH=/bin"}), b"{"],
)
def test_bad_configs_are_data_loss(body):
    with pytest.raises(DataLoss):
        parse_image_config(body)


@pytest.mark.parametrize(
    ("user", "expected"),
    [("", (None, "")), ("0", (0, "")), ("1000:1000", (1000, "")), ("nginx", (None, "nginx")),
     ("www-data:www-data", (None, "www-data")), ("nobody:65534", (None, "nobody")),
     # Only ASCII digits within the CRI's Int64Value are a uid (containerd's ParseInt): "²" is a
     # digit to str.isdigit() yet int() refuses it (the pull failed INTERNAL), and a larger number
     # broke every ListImages (protobuf and msgpack overflow). Both are names then.
     ("²", (None, "²")), ("١٢", (None, "١٢")), (str(2**63 - 1), (2**63 - 1, "")),
     ("99999999999999999999:5", (None, "99999999999999999999"))],
)
def test_user_ids(user, expected):
    assert user_ids(user) == expected
