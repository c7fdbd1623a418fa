"""A small CRI v1 client over the gateway's unix socket, for the CLI, tests and bench."""

from __future__ import annotations

import grpc

from shared.cri import api_pb2, api_pb2_grpc


class CriClient:
    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def runtime_status(socket_path: str, timeout: float = 5.0) -> list[str]:
    """Lines describing the runtime's CRI conditions, for `criplex status`."""
    with CriClient(socket_path) as client:
        version = client.runtime.Version(api_pb2.VersionRequest(), timeout=timeout)
        status = client.runtime.Status(api_pb2.StatusRequest(), timeout=timeout)
    lines = [f"CRI {version.runtime_api_version} {version.runtime_name} {version.runtime_version} "
             f"on unix://{socket_path}"]
    for c in status.status.conditions:
        state = "true" if c.status else f"false ({c.reason}: {c.message})"
        lines.append(f"  {c.type}: {state}")
    return lines
