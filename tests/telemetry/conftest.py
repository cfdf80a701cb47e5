"""Fixtures for the observability tests: a server with tracing, metrics and test models;
OTLP collectors (HTTP, and gRPC) that record what they receive and answer as told."""

from __future__ import annotations

import gzip
import shutil
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from testsupport import (
    FAILING_MODEL_CONFIG,
    FAILING_MODEL_SOURCE,
    free_port,
    write_python_model,
)

if TYPE_CHECKING:
    from batchwire.server.app import ServerThread

#: One request at a time, 0.3 s each, at most one waiting: the rest are rejected.
SLOW_MODEL_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 1
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""

SLOW_MODEL_SOURCE = """
import time


class BatchwireModel:
    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        time.sleep(0.3)
        return {"Y": inputs["X"]}
"""


@pytest.fixture(scope="session")
def telemetry_repository(
    examples_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """mlp and text (copied from the examples), ``mlp_window`` (the mlp with a fixed
    200 ms batch window, so concurrent requests share batches), plus the python models
    ``failing`` and ``slow``."""
    root = tmp_path_factory.mktemp("telemetry-repo")
    for name in ("mlp", "text"):
        shutil.copytree(examples_repository / name, root / name)
    shutil.copytree(examples_repository / "mlp", root / "mlp_window")
    config = root / "mlp_window" / "config.pbtxt"
    text = config.read_text().replace('name: "mlp"', 'name: "mlp_window"')
    text = text.replace(
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        "dynamic_batching { max_queue_delay_microseconds: 200000 }\n"
        'parameters { key: "batchwire.adaptive_delay" value: { string_value: "false" } }',
    )
    assert "200000" in text, text
    config.write_text(text)
    write_python_model(root, "failing", FAILING_MODEL_CONFIG, FAILING_MODEL_SOURCE)
    write_python_model(root, "slow", SLOW_MODEL_CONFIG, SLOW_MODEL_SOURCE)
    return root


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="session")
def telemetry_server(
    telemetry_repository: Path, span_exporter: InMemorySpanExporter
) -> Iterator[ServerThread]:
    """Tracing on for every request (spans in ``span_exporter``), /metrics on a free port.

    Shared by the telemetry tests: they compare counters before and after, and
    restore any trace setting they change.
    """
    from batchwire.server.app import ServerThread
    from batchwire.server.settings import ServerSettings

    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=telemetry_repository,
        metrics_port=free_port(),
        trace_mode="always",
    )
    server = ServerThread(settings, span_exporter=span_exporter).start()
    yield server
    server.stop()


@pytest.fixture()
def spans(telemetry_server: ServerThread, span_exporter: InMemorySpanExporter):
    """A function returning every span exported so far (flushes first)."""

    def collect():
        assert telemetry_server.server.telemetry is not None
        telemetry_server.server.telemetry.tracing.flush()
        return list(span_exporter.get_finished_spans())

    return collect


@dataclass
class Received:
    """One export request as a collector received it."""

    path: str
    #: HTTP headers, or gRPC metadata; keys lower-cased.
    headers: dict[str, str]
    request: trace_service_pb2.ExportTraceServiceRequest

    @property
    def span_count(self) -> int:
        return sum(len(s.spans) for r in self.request.resource_spans for s in r.scope_spans)


@dataclass
class Collector:
    """What a test collector received, and how it answers the next requests."""

    #: ``http://127.0.0.1:<port>``.
    url: str
    received: list[Received] = field(default_factory=list)
    #: Answers for the next requests, in order, before plain success: (HTTP status,
    #: headers) for the HTTP collector, a grpc.StatusCode for the gRPC one.
    failures: list[Any] = field(default_factory=list)
    #: Every request, the failed ones too.
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_failure(self) -> Any:
        with self.lock:
            self.attempts += 1
            return self.failures.pop(0) if self.failures else None


class _HttpHandler(BaseHTTPRequestHandler):
    collector: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        failure = self.collector.next_failure()
        if failure is not None:
            status, headers = failure
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        encoding = self.headers.get("Content-Encoding")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        headers = {key.lower(): value for key, value in self.headers.items()}
        with self.collector.lock:
            self.collector.received.append(Received(self.path, headers, request))
        payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def http_collector() -> Iterator[Collector]:
    """An OTLP/HTTP collector on a free loopback port (any path is accepted and recorded)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HttpHandler)
    collector = Collector(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = type("Handler", (_HttpHandler,), {"collector": collector})
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield collector
    httpd.shutdown()
    httpd.server_close()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        failure = self.collector.next_failure()
        if failure is not None:
            context.abort(failure, "told to fail")
        headers = {key: value for key, value in context.invocation_metadata()}
        with self.collector.lock:
            self.collector.received.append(Received("Export", headers, request))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture()
def grpc_collector() -> Iterator[Collector]:
    """An OTLP/gRPC collector on a free loopback port that fails as told."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    collector = Collector(f"http://127.0.0.1:{port}")
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(collector), server)
    server.start()
    yield collector
    server.stop(grace=None)
