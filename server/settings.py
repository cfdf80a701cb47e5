"""Server settings: one frozen dataclass, filled by the command line or by code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batchwire.telemetry.trace_config import check_trace_settings

#: tritonclient sends messages up to 2 GiB; gRPC's own default is 4 MiB.
DEFAULT_MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How a batchwire server is set up."""

    host: str = "0.0.0.0"
    #: 0 picks a free port (tests); the bound port is reported by the server.
    port: int = 8001
    #: Triton-layout repository; None serves the built-in example models.
    model_repository: Path | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: Pickled nn.Module files run arbitrary code when loaded; refused unless set.
    allow_pickled_models: bool = False
    #: torch intra-op threads per CPU model instance (a model config may set its own);
    #: None: adaptive (see batchwire.batching.placement).
    intra_op_threads: int | None = None
    #: Seconds in-flight requests get to finish on shutdown.
    shutdown_grace: float = 10.0
    server_name: str = "batchwire"
    #: Prometheus /metrics port on ``host``; 0 disables the endpoint.
    metrics_port: int = 0
    #: When the metrics port cannot be bound: True stops start-up with a StartupError
    #: (``batchwire serve`` sets it); False logs an error and serves without the endpoint
    #: (for a program embedding the server that would rather keep inference up).
    metrics_required: bool = False
    #: Tracing: a TraceMode value (batchwire.telemetry.trace_config); None follows
    #: OTEL_TRACES_SAMPLER, else DEFAULT_MODE.
    trace_mode: str | None = None
    #: Fraction of requests without a sampled parent traced in "ratio" mode
    #: (None: OTEL_TRACES_SAMPLER_ARG, else DEFAULT_RATIO).
    trace_rate: float | None = None
    #: A TraceExporter value; None follows OTEL_TRACES_EXPORTER, else DEFAULT_EXPORTER.
    trace_exporter: str | None = None
    #: Collector endpoint; None lets the exporter read OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT.
    trace_endpoint: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        check_trace_settings(self.trace_mode, self.trace_rate, self.trace_exporter)
