"""Observability: OpenTelemetry tracing, Prometheus metrics, Triton statistics, structured logs.

:class:`Telemetry` is what a server holds: it builds one observer per model
version (the registry's ``observer_factory``), keeps their statistics, owns
the tracing pipeline, the /metrics endpoint and the log settings.

Importing this package loads nothing else: the command line imports
:mod:`batchwire.telemetry.trace_config` for its choices without OpenTelemetry.
The names below are loaded on first use.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from batchwire.core.errors import InferenceError
    from batchwire.core.spec import ModelSpec
    from batchwire.telemetry.gpu import GpuMonitor
    from batchwire.telemetry.metrics import MetricsServer
    from batchwire.telemetry.stats import ModelObserver, ModelStats
    from batchwire.telemetry.trace_config import TraceConfig
    from batchwire.telemetry.tracing import Tracing

__all__ = ["ModelObserver", "ModelStats", "Telemetry", "TraceConfig", "Tracing"]

log = logging.getLogger(__name__)

#: Names this package re-exports -> the module that defines them.
_LAZY = {
    "ModelObserver": "batchwire.telemetry.stats",
    "ModelStats": "batchwire.telemetry.stats",
    "TraceConfig": "batchwire.telemetry.trace_config",
    "Tracing": "batchwire.telemetry.tracing",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


class Telemetry:
    """Statistics, metrics, tracing and log settings of one server."""

    def __init__(
        self,
        trace_config: TraceConfig | None = None,
        *,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        from batchwire.telemetry.logs import LogControl
        from batchwire.telemetry.trace_config import TraceConfig
        from batchwire.telemetry.tracing import Tracing

        self.tracing = Tracing(trace_config or TraceConfig(), exporter=span_exporter)
        self.logs = LogControl()
        #: (model, version) -> statistics; kept across reloads so counters never go back.
        self._stats: dict[tuple[str, str], ModelStats] = {}
        self._observers: dict[tuple[str, str], ModelObserver] = {}
        self.metrics_server: MetricsServer | None = None
        self._gpu: GpuMonitor | None = None
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        #: Counters of the access policy, read at scrape time: (model, principal) ->
        #: inference requests, and (group, reason) -> refused calls. Set by the server
        #: when an access policy is in force.
        self.principal_requests: Mapping[tuple[str, str], int] = {}
        self.access_refusals: Mapping[tuple[str, str], int] = {}
        #: Where the version-routing counters live (the server's data plane: its
        #: traffic_weights, routed_requests, shadow_counts, rollback_gates and
        #: rollbacks, and its audit log and drift windows, read at scrape time); None:
        #: no such metrics.
        self.versions: Any = None

    # -- model versions ------------------------------------------------------------------

    def observer_factory(self, spec: ModelSpec) -> ModelObserver:
        """The registry's observer_factory: one observer per model version."""
        from batchwire.telemetry.stats import ModelObserver, ModelStats

        key = (spec.name, spec.version)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = ModelStats(spec.name, spec.version)
        observer = self._observers[key] = ModelObserver(stats, self.tracing)
        return observer

    def request_rejected(self, model: str, version: str, error: InferenceError) -> None:
        """Count a request that failed before reaching its batcher (decode, validation)."""
        observer = self._observers.get((model, version))
        if observer is not None:
            observer.request_rejected(error)

    def stats(self, model: str, version: str) -> ModelStats | None:
        return self._stats.get((model, version))

    def all_stats(self) -> list[ModelStats]:
        return list(self._stats.values())

    def statistics(self, model: str, version: str) -> dict[str, Any] | None:
        """Triton's ModelStatistics (JSON shape) of one version; None if it never loaded."""
        from batchwire.telemetry.stats import statistics_dict

        stats = self._stats.get((model, version))
        return None if stats is None else statistics_dict(stats, self._epoch_offset_ns)

    # -- metrics endpoint ----------------------------------------------------------------

    def start_metrics(self, host: str, port: int) -> int:
        """Serve /metrics on ``host:port`` (0 for a free port); returns the bound port."""
        from batchwire.telemetry.gpu import GpuMonitor
        from batchwire.telemetry.metrics import MetricsCollector, MetricsServer

        if self.metrics_server is not None:
            return self.metrics_server.port
        self._gpu = GpuMonitor()
        collector = MetricsCollector(
            self.all_stats, gpu=self._gpu, access=self._access_counts, traffic=self._traffic
        )
        self.metrics_server = MetricsServer(collector, host, port)
        return self.metrics_server.port

    def render_metrics(self) -> bytes:
        """The /metrics text now (without starting an endpoint)."""
        from batchwire.telemetry.metrics import MetricsCollector

        return MetricsCollector(
            self.all_stats,
            gpu=self._gpu,
            process_metrics=False,
            access=self._access_counts,
            traffic=self._traffic,
        ).render()

    def _traffic(self) -> Any:
        return self.versions

    def _access_counts(self) -> tuple[Mapping[tuple[str, str], int], Mapping[tuple[str, str], int]]:
        return self.principal_requests, self.access_refusals

    # -- lifecycle -----------------------------------------------------------------------

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the metrics endpoint, export queued spans (bounded), release NVML."""
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None
        self.tracing.shutdown(timeout_s)
