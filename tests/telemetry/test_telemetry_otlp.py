"""End to end: spans leave the server over OTLP (gRPC and HTTP) and reach a real receiver."""

from __future__ import annotations

import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from testsupport import start_server

from batchwire.clients import InferenceClient
from batchwire.telemetry.receiver import OtlpReceiver

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _send_traced_requests(address: str, count: int = 3) -> None:
    x = np.ones((1, 64), np.float32)
    with InferenceClient(address) as client:
        for _ in range(count):
            client.infer(
                "mlp", {"INPUT__0": x}, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            )


def test_spans_reach_an_otlp_grpc_receiver_with_the_callers_trace_id(
    examples_repository, monkeypatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "batchwire-e2e")
    with OtlpReceiver() as receiver:
        server = start_server(
            examples_repository,
            trace_mode="ratio",
            trace_rate=0.0,  # only requests with a sampled parent
            trace_exporter="otlp-grpc",
            trace_endpoint=f"127.0.0.1:{receiver.port}",
        )
        try:
            _send_traced_requests(server.address)
            with InferenceClient(server.address) as client:  # no traceparent: not sampled
                client.infer("mlp", {"INPUT__0": np.ones((1, 64), np.float32)})
            server.server.telemetry.tracing.flush()
            spans = receiver.wait_for(
                lambda spans: sum(s.name == "ModelInfer" for s in spans) >= 3, timeout=15
            )
        finally:
            server.stop()
    requests = [s for s in spans if s.name == "ModelInfer"]
    assert len(requests) == 3
    for span in requests:
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id.hex() == PARENT_ID
        assert span.kind == span.SPAN_KIND_SERVER
    for span in requests:
        events = [e.name for e in span.events]
        assert events[0] == "queue_start" and events[-1] == "response_send"
        assert "compute_start" in events
    batches = [s for s in spans if s.name == "batch"]
    assert batches and all(link.trace_id.hex() == TRACE_ID for b in batches for link in b.links)
    assert receiver.services == {"batchwire-e2e"}


def test_stream_spans_reach_the_receiver_each_with_its_request_id(
    examples_repository,
) -> None:
    """A stream tags each request with an id: every span of the stream carries its own,
    over the exporter process's layout encoding (ids of several sizes, repeated)."""
    count = 12  # ids "0".."11": two sizes, each several times
    with OtlpReceiver() as receiver:
        server = start_server(
            examples_repository,
            trace_mode="ratio",
            trace_rate=0.0,
            trace_exporter="otlp-grpc",
            trace_endpoint=f"127.0.0.1:{receiver.port}",
        )
        try:
            x = np.ones((1, 64), np.float32)
            with InferenceClient(server.address) as client:
                results = list(
                    client.stream_infer(
                        "mlp",
                        ({"INPUT__0": x} for _ in range(count)),
                        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
                    )
                )
            assert sorted(int(result.id) for result in results) == list(range(count))
            server.server.telemetry.tracing.flush()
            spans = receiver.wait_for(
                lambda spans: sum(s.name == "ModelStreamInfer" for s in spans) >= count,
                timeout=15,
            )
        finally:
            server.stop()
    streamed = [s for s in spans if s.name == "ModelStreamInfer"]
    ids = sorted(
        int(a.value.string_value) for s in streamed for a in s.attributes
        if a.key == "batchwire.request.id"
    )  # fmt: skip
    assert ids == list(range(count))
    assert len({s.span_id for s in streamed}) == count
    assert all(s.trace_id.hex() == TRACE_ID for s in streamed)


def test_spans_reach_an_otlp_http_receiver(examples_repository, http_collector) -> None:
    server = start_server(
        examples_repository,
        trace_mode="always",
        trace_exporter="otlp-http",
        trace_endpoint=http_collector.url.removeprefix("http://"),  # a bare host:port
    )
    try:
        _send_traced_requests(server.address, count=2)
        server.server.telemetry.tracing.flush()
    finally:
        server.stop()
    received = http_collector.received
    assert received and {r.path for r in received} == {"/v1/traces"}
    assert {r.headers["content-type"] for r in received} == {"application/x-protobuf"}
    spans = [
        span
        for r in received
        for resource in r.request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    requests = [s for s in spans if s.name == "ModelInfer"]
    assert len(requests) == 2 and all(s.trace_id.hex() == TRACE_ID for s in requests)


def test_a_count_only_receiver_counts_every_span_and_keeps_none() -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    request = trace_service_pb2.ExportTraceServiceRequest()
    for spans in (3, 2):
        scope = request.resource_spans.add().scope_spans.add()
        for i in range(spans):
            scope.spans.add(name=f"span-{i}")
    with OtlpReceiver(keep=False) as receiver:
        assert not receiver.keeps
        with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            export = trace_service_pb2_grpc.TraceServiceStub(channel).Export
            export(request, timeout=10)
            export(request, timeout=10)
        assert (receiver.span_count, receiver.exports) == (10, 2)
        assert receiver.spans == []
