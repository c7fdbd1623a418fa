"""The CRI configs as monitord reads them: parsed from their protobuf JSON, and the names they reserve."""

from __future__ import annotations

import json
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from shared.cri import api_pb2
from shared.errors import InvalidArgument

M = TypeVar("M", bound=Message)


def parse_config(text: str, message: type[M], what: str) -> M:
    try:
        return json_format.Parse(text, message(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidArgument(f"{what} is not a valid {message.__name__}: {exc}") from None


def container_tty(config_json: str) -> bool:
    """ContainerConfig.tty of a stored config, which CreateContainer already validated.

    On ExecSync's path (probes): json_format.Parse of a whole config costs ~0.1 ms for a small one
    and more for a kubelet's, with its env and mounts; json.loads, ~5 µs.
    """
    return json.loads(config_json).get("tty") is True


def sandbox_name(config: api_pb2.PodSandboxConfig) -> str:
    meta = config.metadata
    missing = [f for f in ("name", "namespace", "uid") if not getattr(meta, f)]
    if missing:
        raise InvalidArgument(f"PodSandboxConfig.metadata needs {', '.join(missing)}")
    return f"k8s_POD_{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def container_name(config: api_pb2.ContainerConfig, sandbox: api_pb2.PodSandboxConfig) -> str:
    if not config.metadata.name:
        raise InvalidArgument("ContainerConfig.metadata needs a name")
    pod = sandbox.metadata
    return f"k8s_{config.metadata.name}_{pod.name}_{pod.namespace}_{pod.uid}_{config.metadata.attempt}"
