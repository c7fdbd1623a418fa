"""CRI RuntimeConfig: the kubelet reads the cgroup driver from here at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from shared.cri import api_pb2

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def runtime_config(gw: Gateway, _req: api_pb2.RuntimeConfigRequest, _call: Call
                         ) -> api_pb2.RuntimeConfigResponse:
    driver = api_pb2.SYSTEMD if gw.config.monitord.cgroup_manager == "systemd" else api_pb2.CGROUPFS
    return api_pb2.RuntimeConfigResponse(linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=driver))
