"""One CRI call produces one trace across the gateway and the daemon that served it."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from shared.cri import api_pb2
from tests.support.runtime import CriplexRun, wait_for


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver, collecting (service, span) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for rs in request.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                for ss in rs.scope_spans:
                    self.spans.extend((service, span) for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    recv = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(recv, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield recv, port
    server.stop(0)


def test_one_cri_call_is_one_trace_across_gateway_and_daemon(receiver):
    recv, port = receiver
    with CriplexRun(extra_toml=f'[tracing]\nendpoint = "http://127.0.0.1:{port}"\nsample_rate = 1.0\n') as run:
        with run.client() as c:
            c.image.ImageFsInfo(api_pb2.ImageFsInfoRequest(), timeout=10)

        def find():
            with recv.lock:
                server = [s for svc, s in recv.spans if svc == "criplex-gateway"
                          and s.name == "runtime.v1/ImageFsInfo"]
                if not server:
                    return None
                trace_id = server[0].trace_id
                in_trace = [(svc, s) for svc, s in recv.spans if s.trace_id == trace_id]
                daemon = [s for svc, s in in_trace if svc == "criplex-storaged"]
                return (server[0], in_trace, daemon) if daemon else None

        wait_for(lambda: find() is not None, 15, "spans from the gateway and storaged")
        server_span, in_trace, daemon = find()
        gateway = {s.span_id: s for svc, s in in_trace if svc == "criplex-gateway"}
        assert daemon[0].name == "storaged/fs_usage"
        # storaged's span hangs under the gateway's client span for the hop,
        # which hangs under the gateway's server span for the CRI call.
        hop = gateway[daemon[0].parent_span_id]
        assert hop.name == "storaged/fs_usage"
        assert hop.parent_span_id == server_span.span_id
        assert {svc for svc, _ in in_trace} >= {"criplex-gateway", "criplex-storaged"}
