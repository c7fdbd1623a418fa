"""CRI Status: runtime and network readiness from the daemons' cached health.

Never waits on a daemon: the kubelet polls this often and must get an answer even
while a daemon restarts. `verbose` adds the effective config and each daemon's state
as JSON strings (crictl info decodes them).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.typed import to_plain

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def status(gw: Gateway, req: api_pb2.StatusRequest, _call: Call) -> api_pb2.StatusResponse:
    conditions = [
        api_pb2.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
        for c in gw.health.conditions()
    ]
    response = api_pb2.StatusResponse(
        status=api_pb2.RuntimeStatus(conditions=conditions),
        runtime_handlers=runtime_handlers(gw),
        features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True),
    )
    if req.verbose:
        daemons = {
            st.service: {"connected": st.connected, "ready": st.ready, "health": to_plain(st.health),
                         "checked_at": st.checked_at, "error": st.error, "starts_seen": st.starts_seen}
            for st in gw.health.states()
        }
        response.info["config"] = json.dumps(to_plain(gw.config))
        response.info["daemons"] = json.dumps(daemons)
    return response


def runtime_handlers(gw: Gateway) -> list[api_pb2.RuntimeHandler]:
    """Each configured handler, and the default one again under the name "" as the kubelet expects.

    Features are reported as criplex can deliver them today: no user namespaces, and no
    recursive read-only mounts (Debian 12's runc 1.1 has no "rro" mount option).
    """
    features = api_pb2.RuntimeHandlerFeatures(recursive_read_only_mounts=False, user_namespaces=False)
    names = ["", *gw.config.monitord.runtimes]
    return [api_pb2.RuntimeHandler(name=name, features=features) for name in names]
