"""CRI Version: who we are; answered by the gateway alone."""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway

RUNTIME_NAME = "criplex"
RUNTIME_API_VERSION = "v1"
# The kubelet's "version" field is the CRI's own version string, not ours.
KUBELET_API_VERSION = "0.1.0"


def _runtime_version() -> str:
    try:
        return metadata.version("criplex")
    except metadata.PackageNotFoundError:
        return "0.0.0-dev"


_RESPONSE = api_pb2.VersionResponse(
    version=KUBELET_API_VERSION,
    runtime_name=RUNTIME_NAME,
    runtime_version=_runtime_version(),
    runtime_api_version=RUNTIME_API_VERSION,
)


async def version(_gw: Gateway, _req: api_pb2.VersionRequest, _call: Call) -> api_pb2.VersionResponse:
    return _RESPONSE
