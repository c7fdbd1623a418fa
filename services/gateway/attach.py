"""CRI Attach: the container's own stdio, through conmon's attach socket; streamd serves it.

conmon was started with `--socket-dir-path <run_dir>/monitord/s -u <id>`: it links
`s/<id>` to the bundle, and that short path keeps the socket's address inside sun_path.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from services.gateway.exec import check_streams, running_container
from services.gateway.instrument import Call
from shared.cri import api_pb2
from shared.schema.streamd import PREPARE_ATTACH, AttachSession

if TYPE_CHECKING:
    from services.gateway.app import Gateway


async def attach(gw: Gateway, req: api_pb2.AttachRequest, call: Call) -> api_pb2.AttachResponse:
    check_streams("Attach", req.tty, req.stdin, req.stdout, req.stderr)
    record = await running_container(gw, req.container_id, "Attach")
    monitord_run = os.path.join(gw.config.paths.run_dir, "monitord")
    session = AttachSession(
        container_id=record.id,
        attach_socket=os.path.join(monitord_run, "s", record.id, "attach"),
        ctl_fifo=os.path.join(record.bundle or os.path.join(monitord_run, "bundles", record.id), "ctl"),
        tty=req.tty, stdin=req.stdin, stdout=req.stdout, stderr=req.stderr,
    )
    prepared = await gw.streamd.call(PREPARE_ATTACH, session, call.timeout)
    return api_pb2.AttachResponse(url=prepared.url)
