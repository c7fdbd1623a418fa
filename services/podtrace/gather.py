"""Find a pod's start in the gateway's span ring, then collect its traces from every process."""

from __future__ import annotations

import asyncio
import dataclasses

from shared.config import DAEMONS, Config
from shared.errors import CriplexError
from shared.schema.common import SPANS, SpanRecord, SpansRequest
from shared.tracing import Tracing
from shared.transport import DaemonClient

PROCESSES = ("gateway", *DAEMONS)
POD_ATTRIBUTE = "criplex.pod_sandbox_id"
CONTAINER_ATTRIBUTE = "criplex.container_id"
# The CRI calls that make up a pod's start, as the gateway names their server spans.
START_CALLS = ("runtime.v1/RunPodSandbox", "runtime.v1/CreateContainer", "runtime.v1/StartContainer")
_TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True)
class PodTrace:
    pod_id: str
    spans: tuple[SpanRecord, ...]
    unreachable: tuple[str, ...]  # processes that did not answer: their spans are missing


async def gather_pod(config: Config, pod_id: str) -> PodTrace:
    # The CLI's own calls are not worth spans.
    tracing = Tracing("cli", dataclasses.replace(config.tracing, endpoint="", ring_size=0))
    clients = {name: DaemonClient(name, config, tracing) for name in PROCESSES}
    try:
        gateway = clients["gateway"]
        roots = list(await _spans(gateway, SpansRequest(attribute=POD_ATTRIBUTE, values=(pod_id,))))
        containers = tuple(sorted({s.attributes[CONTAINER_ATTRIBUTE] for s in roots
                                   if s.name == "runtime.v1/CreateContainer" and CONTAINER_ATTRIBUTE in s.attributes}))
        if containers:
            roots += await _spans(gateway, SpansRequest(attribute=CONTAINER_ATTRIBUTE, values=containers))
        traces = tuple(sorted({s.trace_id for s in roots if s.name in START_CALLS}))
        if not traces:
            return PodTrace(pod_id, (), ())
        answers = await asyncio.gather(*(_spans(c, SpansRequest(trace_ids=traces)) for c in clients.values()),
                                       return_exceptions=True)
    finally:
        for client in clients.values():
            client.close()
    spans: dict[str, SpanRecord] = {}
    unreachable = []
    for name, answer in zip(clients, answers, strict=True):
        if isinstance(answer, BaseException):
            unreachable.append(name)
            continue
        for span in answer:
            spans[span.span_id] = span
    return PodTrace(pod_id, tuple(sorted(spans.values(), key=lambda s: s.start_ns)), tuple(unreachable))


async def _spans(client: DaemonClient, request: SpansRequest) -> tuple[SpanRecord, ...]:
    try:
        return (await client.call(SPANS, request, timeout=_TIMEOUT_S)).spans
    except CriplexError as exc:
        raise RuntimeError(f"{client.service}: {exc.message}") from None
