"""CRI ImageFsInfo: bytes and inodes of the image store and of container writable layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.storaged import FS_USAGE, FsUsageRequest

if TYPE_CHECKING:
    from services.gateway.app import Gateway


def _usage(timestamp: int, mountpoint: str, used: int, inodes: int) -> api_pb2.FilesystemUsage:
    return api_pb2.FilesystemUsage(
        timestamp=timestamp,
        fs_id=api_pb2.FilesystemIdentifier(mountpoint=mountpoint),
        used_bytes=api_pb2.UInt64Value(value=used),
        inodes_used=api_pb2.UInt64Value(value=inodes),
    )


async def image_fs_info(gw: Gateway, _req: api_pb2.ImageFsInfoRequest, call: Call) -> api_pb2.ImageFsInfoResponse:
    u = await gw.storaged.call(FS_USAGE, FsUsageRequest(), call.timeout)
    return api_pb2.ImageFsInfoResponse(
        image_filesystems=[_usage(u.timestamp_ns, u.mountpoint, u.image_bytes, u.image_inodes)],
        container_filesystems=[_usage(u.timestamp_ns, u.container_mountpoint, u.container_bytes,
                                      u.container_inodes)],
    )
