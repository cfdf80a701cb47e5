"""A minimal OTLP/gRPC trace receiver: collects exported spans in memory.

For tests, benchmarks and local debugging without a collector: it implements
``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on a loopback
port and keeps every received span (as protobuf ``Span`` messages), or with
``keep=False`` only counts them.

``python -m batchwire.telemetry.receiver --port 4317 [--count-only]`` runs one
until SIGTERM/SIGINT, then prints ``{"spans": N, "exports": M}`` (benchmarks run
it in its own process, so that receiving does not load the load generator).

    with OtlpReceiver() as receiver:          # 127.0.0.1, a free port
        ...  # run a server with --trace-endpoint receiver.endpoint
        spans = receiver.wait_for(lambda spans: len(spans) >= 5, timeout=10)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if not self.receiver.keeps:  # count-only: no Python object per span
            self.receiver.count(
                sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
            )
            return trace_service_pb2.ExportTraceServiceResponse()
        received: list[tuple[str, trace_pb2.Span]] = []
        for resource_spans in request.resource_spans:
            service = ""
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    service = attribute.value.string_value
            for scope_spans in resource_spans.scope_spans:
                received.extend((service, span) for span in scope_spans.spans)
        self.receiver.add(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """An OTLP/gRPC TraceService on ``host:port`` (port 0: a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: bool = True) -> None:
        self._keep = keep
        self.span_count = 0
        self._spans: list[trace_pb2.Span] = []
        self._services: list[str] = []
        self._cond = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        self.host = host
        self.exports = 0

    @property
    def endpoint(self) -> str:
        """``http://host:port`` (what ``--trace-endpoint`` takes)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def keeps(self) -> bool:
        """Whether received spans are kept (else only counted)."""
        return self._keep

    def count(self, spans: int) -> None:
        """Count one export of ``spans`` spans (the service calls it)."""
        with self._cond:
            self.exports += 1
            self.span_count += spans
            self._cond.notify_all()

    def add(self, received: list[tuple[str, trace_pb2.Span]]) -> None:
        """Keep one export's (service name, span) pairs (the service calls it)."""
        with self._cond:
            self.exports += 1
            self.span_count += len(received)
            for service, span in received:
                self._services.append(service)
                self._spans.append(span)
            self._cond.notify_all()

    @property
    def spans(self) -> list[trace_pb2.Span]:
        with self._cond:
            return list(self._spans)

    @property
    def services(self) -> set[str]:
        """The ``service.name`` resource attributes seen."""
        with self._cond:
            return set(self._services)

    def wait_for(
        self, predicate: Callable[[list[trace_pb2.Span]], bool], timeout: float = 10.0
    ) -> list[trace_pb2.Span]:
        """Block until ``predicate(spans)`` holds (TimeoutError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"OTLP receiver: condition not met within {timeout} s "
                        f"({len(self._spans)} spans received)"
                    )
                self._cond.wait(left)
            return list(self._spans)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description="A minimal OTLP/gRPC trace receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4317)
    parser.add_argument("--count-only", action="store_true", help="count spans, keep none")
    ns = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiver = OtlpReceiver(ns.host, ns.port, keep=not ns.count_only).start()
    print(f"listening on {ns.host}:{receiver.port}", flush=True)
    stop.wait()
    receiver.stop()
    print(json.dumps({"spans": receiver.span_count, "exports": receiver.exports}), flush=True)


if __name__ == "__main__":
    main()
