"""Builders of spec inputs for the spec generator's tests."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from services.monitord.spec import HostFacts, SpecInputs
from services.monitord.spec.capabilities import KNOWN_CAPABILITIES
from shared.cri import api_pb2
from shared.schema.imaged import ImageRecord
from shared.schema.monitord import SandboxRecord, SandboxState

# As on these hosts: everything but CAP_SYS_RESOURCE.
HOST_BOUNDING = frozenset(KNOWN_CAPABILITIES - {"CAP_SYS_RESOURCE"})


def image(**fields: Any) -> ImageRecord:
    base = ImageRecord(
        id="sha256:" + "ab" * 32,
        repo_tags=("busybox:latest",),
        repo_digests=(),
        size=0,
        manifest_digest="",
        manifest_media_type="",
        config_digest="",
        chain_ids=(),
        diff_ids=(),
    )
    return dataclasses.replace(base, **fields)


def sandbox(**fields: Any) -> SandboxRecord:
    base = SandboxRecord(
        id="pod1",
        name="k8s_POD_p_default_uid_0",
        config_json="{}",
        runtime_handler="",
        state=SandboxState.READY,
        created_at=0,
        revision=1,
    )
    return dataclasses.replace(base, **fields)


def host(**fields: Any) -> HostFacts:
    base = HostFacts(bounding_capabilities=HOST_BOUNDING, hooks_dirs=(), cdi_dirs=())
    return dataclasses.replace(base, **fields)


def container_config(**fields: Any) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(**fields)
    if not config.metadata.name:
        config.metadata.name = "c"
    return config


def inputs(rootfs: str, **fields: Any) -> SpecInputs:
    values: dict[str, Any] = {
        "container_id": "ctr1",
        "sandbox": sandbox(),
        "sandbox_config": api_pb2.PodSandboxConfig(hostname="podhost"),
        "config": container_config(command=["/bin/sh"]),
        "image": image(),
        "rootfs": rootfs,
        "host": host(),
    }
    values.update(fields)
    return SpecInputs(**values)


def busybox_rootfs(root: Path, passwd: str = "root:x:0:0:root:/root:/bin/sh\n", group: str = "root:x:0:\n") -> Path:
    """A minimal rootfs: static busybox with its applets linked in /bin, and /etc files."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "id", "cat", "ls", "sleep", "unshare", "true", "grep", "echo", "wget", "env", "hostname"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text(group)
    return root
