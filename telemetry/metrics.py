"""Prometheus metrics: Triton-compatible ``nv_*`` names plus ``batchwire_*`` histograms.

Nothing is updated per request here: the families are built at scrape time
from the :class:`~batchwire.telemetry.stats.ModelStats` counters the observers
keep, so the request path pays for plain integer additions only (no metric
objects, no label lookups, no locks).

The text is Prometheus' exposition format 0.0.4, written here rather than by
``prometheus_client.generate_latest`` because Triton's counters carry no
``_total`` suffix (``nv_inference_request_success``), which prometheus-client
would add. Process metrics (CPU, memory, file descriptors) come from
prometheus-client's own collectors and are appended.

``/metrics`` is served by a small threaded HTTP server on its own port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from batchwire import __version__
from batchwire.batching import inline_watch
from batchwire.telemetry.gpu import GpuMonitor
from batchwire.telemetry.stats import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_S,
    TRITON_REASON_LABELS,
    ModelStats,
    triton_reason,
)

log = logging.getLogger(__name__)

#: () -> ((model, principal) -> requests, (group, reason) -> refusals).
AccessCounts = Callable[[], tuple[Mapping[tuple[str, str], int], Mapping[tuple[str, str], int]]]
#: Returns the object holding the version-routing counters (the data plane: its
#: ``traffic_weights``, ``routed_requests``, ``shadow_counts``, ``rollback_gates`` and
#: ``rollbacks``), or None.
TrafficCounts = Callable[[], Any]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(slots=True)
class Family:
    """One metric family: ``samples`` are (sample name, labels, value)."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        self.samples.append((self.name + suffix, labels, value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(value) if type(value) is int else floatToGoString(value)


def render(families: Iterable[Family]) -> str:
    """Families in the Prometheus text format 0.0.4."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.help}\n")
        out.append(f"# TYPE {family.name} {family.type}\n")
        for name, labels, value in family.samples:
            if labels:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{text}}} {_number(value)}\n")
            else:
                out.append(f"{name} {_number(value)}\n")
    return "".join(out)


def _histogram(
    family: Family,
    labels: dict[str, str],
    counts: list[int],
    bounds: Iterable[float],
    total: float,
) -> None:
    cumulative = 0
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        family.add({**labels, "le": floatToGoString(bound)}, cumulative, "_bucket")
    cumulative += counts[-1]
    family.add({**labels, "le": "+Inf"}, cumulative, "_bucket")
    family.add(labels, total, "_sum")
    family.add(labels, cumulative, "_count")


#: (name, help) of the Triton-compatible per-model counters, in exposition order.
_TRITON_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_request_duration_us", "Cumulative successful inference request duration in microseconds (includes cached requests)"),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds (includes cached requests)"),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds (does not include cached requests)"),
)  # fmt: skip


class MetricsCollector:
    """Builds every metric family from the current model statistics (any thread)."""

    def __init__(
        self,
        stats: Callable[[], list[ModelStats]],
        *,
        gpu: GpuMonitor | None = None,
        process_metrics: bool = True,
        access: AccessCounts | None = None,
        traffic: TrafficCounts | None = None,
    ) -> None:
        self._stats = stats
        self._gpu = gpu
        self._access = access
        self._traffic = traffic
        self._process: CollectorRegistry | None = None
        if process_metrics:
            registry = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            self._process = registry
        # The server builds its collector on its event loop; that loop's tasks are
        # counted at scrape time (None when built off a loop: no gauge).
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def families(self) -> list[Family]:
        counters = {name: Family(name, "counter", text) for name, text in _TRITON_COUNTERS}
        pending = Family(
            "nv_inference_pending_request_count",
            "gauge",
            "Instantaneous number of pending requests awaiting execution per-model.",
        )
        request_h = Family(
            "batchwire_request_duration_seconds",
            "histogram",
            "Successful request latency in the server, from entering the batcher to the answer.",
        )
        queue_h = Family(
            "batchwire_queue_duration_seconds",
            "histogram",
            "Time successful requests waited in the queue before their batch started.",
        )
        compute_h = Family(
            "batchwire_compute_duration_seconds",
            "histogram",
            "Compute time of each executed batch (input + infer + output).",
        )
        batch_h = Family(
            "batchwire_batch_size",
            "histogram",
            "Items per executed batch (sum of batch dimensions).",
        )
        depth = Family(
            "batchwire_queue_depth",
            "gauge",
            "Requests queued per model version and priority level.",
        )
        failures = Family(
            "batchwire_request_failures_total",
            "counter",
            "Failed requests by batchwire reason (rejected, timeout, cancelled, deadline_exceeded, "
            "backend, invalid_argument, unavailable, ...).",
        )
        hung = Family(
            "batchwire_hung_instances",
            "gauge",
            "Instances running a batch past batchwire.hang_timeout_ms, per model version.",
        )
        c = counters
        for stats in self._stats():
            labels = {"model": stats.model, "version": stats.version}
            by_reason = dict(stats.failures)
            c["nv_inference_request_success"].add(labels, stats.success_count)
            triton = dict.fromkeys(TRITON_REASON_LABELS, 0)
            for reason, count in by_reason.items():
                triton[triton_reason(reason)] += count
                failures.add({**labels, "reason": reason}, count)
            for reason, count in triton.items():
                c["nv_inference_request_failure"].add({**labels, "reason": reason}, count)
            c["nv_inference_count"].add(labels, stats.inference_count)
            c["nv_inference_exec_count"].add(labels, stats.execution_count)
            c["nv_inference_request_duration_us"].add(labels, stats.success_ns // 1000)
            c["nv_inference_queue_duration_us"].add(labels, stats.queue_ns // 1000)
            c["nv_inference_compute_input_duration_us"].add(labels, stats.compute_input_ns // 1000)
            c["nv_inference_compute_infer_duration_us"].add(labels, stats.compute_infer_ns // 1000)
            c["nv_inference_compute_output_duration_us"].add(
                labels, stats.compute_output_ns // 1000
            )
            hung.add(labels, stats.hung_instances)
            levels = dict(stats.depth)
            pending.add(labels, sum(levels.values()))
            for level, count in sorted(levels.items()):
                depth.add({**labels, "priority": str(level)}, count)
            _histogram(
                request_h,
                labels,
                list(stats.request_hist),
                LATENCY_BUCKETS_S,
                stats.success_ns / 1e9,
            )
            _histogram(
                queue_h, labels, list(stats.queue_hist), LATENCY_BUCKETS_S, stats.queue_ns / 1e9
            )
            _histogram(
                compute_h,
                labels,
                list(stats.compute_hist),
                LATENCY_BUCKETS_S,
                stats.compute_hist_ns / 1e9,
            )
            _histogram(
                batch_h, labels, list(stats.batch_hist), BATCH_SIZE_BUCKETS, stats.batch_items
            )
        families = [
            *counters.values(),
            pending,
            request_h,
            queue_h,
            compute_h,
            batch_h,
            depth,
            failures,
            hung,
        ]
        families.extend(self._cache_families())
        stalls = Family(
            "batchwire_event_loop_blocked_seconds",
            "gauge",
            "How long a batch run inline on the event loop has held it, while past "
            "batchwire.hang_timeout_ms (no series otherwise).",
        )
        for model, version, seconds in inline_watch.blocked():
            stalls.add({"model": model, "version": version}, seconds)
        families.append(stalls)
        if self._loop is not None and not self._loop.is_closed():
            tasks = Family(
                "batchwire_asyncio_tasks", "gauge", "Unfinished asyncio tasks on the server's loop."
            )
            # all_tasks copies the loop's task set before reading it, retrying when the
            # loop changes it meanwhile: CPython's way to call it from another thread.
            tasks.add({}, len(asyncio.all_tasks(self._loop)))
            families.append(tasks)
        families.extend(self._gpu_families())
        families.extend(self._access_families())
        families.extend(self._traffic_families())
        if self._traffic is not None:
            # Imported here: that module builds on this one's Family.
            from batchwire.telemetry.governance_metrics import governance_families

            families.extend(governance_families(self._traffic()))
        info = Family("batchwire_build_info", "gauge", "batchwire version (always 1).")
        info.add({"version": __version__}, 1)
        families.append(info)
        return families

    def _cache_families(self) -> list[Family]:
        """Triton's per-model response cache counters, batchwire's occupancy and coalescing.

        Only for versions whose responses are cached (or requests coalesced), as Triton
        reports its cache metrics only for models with the cache enabled.
        """
        hits = Family("nv_cache_num_hits_per_model", "counter", "Number of cache hits per model")
        hit_us = Family(
            "nv_cache_hit_duration_per_model",
            "counter",
            "Total cache hit duration per model, in microseconds",
        )
        misses = Family(
            "nv_cache_num_misses_per_model", "counter", "Number of cache misses per model"
        )
        miss_us = Family(
            "nv_cache_miss_duration_per_model",
            "counter",
            "Total cache miss (insert+lookup) duration per model, in microseconds",
        )
        entries = Family(
            "batchwire_response_cache_entries",
            "gauge",
            "Responses of the model version in the response cache now.",
        )
        size = Family(
            "batchwire_response_cache_bytes",
            "gauge",
            "Bytes the model version's cached responses count against --cache-config size.",
        )
        evictions = Family(
            "batchwire_response_cache_evictions_total",
            "counter",
            "Cached responses of the model version evicted to make room (least recently used).",
        )
        coalesced = Family(
            "batchwire_coalesced_requests_total",
            "counter",
            "Requests answered by an identical request's run instead of running "
            "(batchwire.coalesce).",
        )
        for stats in self._stats():
            labels = {"model": stats.model, "version": stats.version}
            if stats.response_cache:
                hits.add(labels, stats.cache_hit_count)
                hit_us.add(labels, stats.cache_hit_ns // 1000)
                misses.add(labels, stats.cache_miss_count)
                miss_us.add(labels, stats.cache_miss_ns // 1000)
                entries.add(labels, stats.cache_entries)
                size.add(labels, stats.cache_bytes)
                evictions.add(labels, stats.cache_evictions)
            if stats.coalescing:
                coalesced.add(labels, stats.coalesced_count)
        return [hits, hit_us, misses, miss_us, entries, size, evictions, coalesced]

    def _traffic_families(self) -> list[Family]:
        if self._traffic is None:
            return []
        source = self._traffic()
        if source is None:
            return []
        weights, routed = source.traffic_weights, source.routed_requests
        # Declared even while empty (no split, shadow or rollback yet), as the other
        # families are: dashboards and alerts can name them before the first request.
        families = self._shadow_families(source.shadow_counts)
        families.extend(self._rollback_families(source.rollback_gates, source.rollbacks))
        weight = Family(
            "batchwire_traffic_weight",
            "gauge",
            "Weight of each version in its model's traffic split in force (batchwire.traffic).",
        )
        # Copies: the loop thread changes these while a scrape runs in the metrics thread.
        for model, split in sorted(dict(weights).items()):
            for version, share in dict(split).items():
                weight.add({"model": model, "version": version}, share)
        counted = Family(
            "batchwire_routed_requests_total",
            "counter",
            "Requests of models with a traffic split, per version they went to and route "
            "(split: by weight, sticky: by routing_key, pinned: the caller named the version).",
        )
        for (model, version, route), count in sorted(dict(routed).items()):
            counted.add({"model": model, "version": version, "route": route}, count)
        return [weight, counted, *families]

    @staticmethod
    def _rollback_families(gates: Any, rollbacks: Any) -> list[Family]:
        gates, rollbacks = dict(gates), dict(rollbacks)
        active = Family(
            "batchwire_rollback_active",
            "gauge",
            "1 while a model's traffic split is rolled back to its stable version "
            "(batchwire.rollback), until the model is loaded again.",
        )
        for model, gate in sorted(gates.items()):
            active.add({"model": model}, 1 if gate.fired else 0)
        fired = Family(
            "batchwire_rollbacks_total",
            "counter",
            "Automatic rollbacks per model and the rule that fired them.",
        )
        for (model, rule), count in sorted(rollbacks.items()):
            fired.add({"model": model, "rule": rule}, count)
        return [active, fired]

    @staticmethod
    def _shadow_families(shadows: Any) -> list[Family]:
        requests, outputs = dict(shadows.requests), dict(shadows.outputs)
        by_outcome = Family(
            "batchwire_shadow_requests_total",
            "counter",
            "Shadow copies per model, shadow version and outcome (compared, shadow_error, "
            "primary_error, dropped).",
        )
        for (model, version, outcome), count in sorted(requests.items()):
            by_outcome.add({"model": model, "shadow": version, "outcome": outcome}, count)
        out_of_tolerance = Family(
            "batchwire_shadow_out_of_tolerance_total",
            "counter",
            "Compared outputs whose largest |primary - shadow| is past batchwire.shadow_tolerance.",
        )
        flips = Family(
            "batchwire_shadow_argmax_flips_total",
            "counter",
            "Compared class-score outputs whose top-1 class differs for some item.",
        )
        diff = Family(
            "batchwire_shadow_max_abs_diff",
            "histogram",
            "Largest |primary - shadow| of each compared output.",
        )
        for (model, primary, shadow, output), row in sorted(outputs.items()):
            labels = {"model": model, "primary": primary, "shadow": shadow, "output": output}
            out_of_tolerance.add(labels, row[1])
            flips.add(labels, row[2])
            running = 0.0
            for le, count in zip((*shadows.buckets, float("inf")), row[4:], strict=True):
                running += count
                diff.add({**labels, "le": _number(le)}, running, "_bucket")
            diff.add(labels, row[3], "_sum")
            diff.add(labels, row[0], "_count")
        return [by_outcome, out_of_tolerance, flips, diff]

    def _access_families(self) -> list[Family]:
        if self._access is None:
            return []
        principals, refusals = self._access()
        if not principals and not refusals:
            return []
        by_principal = Family(
            "batchwire_principal_requests_total",
            "counter",
            "Inference requests admitted per model and authenticated principal (--auth-config).",
        )
        # Copies: the loop thread adds keys while a scrape runs in the metrics thread.
        for (model, principal), count in sorted(dict(principals).items()):
            by_principal.add({"model": model, "principal": principal}, count)
        refused = Family(
            "batchwire_access_refused_total",
            "counter",
            "Calls refused by the access policy per protocol group and reason (restricted, "
            "unauthenticated, permission_denied).",
        )
        for (group, reason), count in sorted(dict(refusals).items()):
            refused.add({"group": group, "reason": reason}, count)
        return [by_principal, refused]

    def _gpu_families(self) -> list[Family]:
        util = Family("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)")
        used = Family("nv_gpu_memory_used_bytes", "gauge", "GPU used memory, in bytes")
        total = Family("nv_gpu_memory_total_bytes", "gauge", "GPU total memory, in bytes")
        power = Family("nv_gpu_power_usage", "gauge", "GPU power usage in watts")
        for sample in self._gpu.samples() if self._gpu is not None else ():
            labels = {"gpu_uuid": sample.uuid}
            for family, value in (
                (util, sample.utilization),
                (used, sample.memory_used_bytes),
                (total, sample.memory_total_bytes),
                (power, sample.power_watts),
            ):
                if value is not None:
                    family.add(labels, value)
        return [util, used, total, power]

    def render(self) -> bytes:
        text = render(self.families()).encode()
        if self._process is not None:
            try:
                text += generate_latest(self._process)
            except Exception:
                log.exception("process metrics failed; left out of this scrape")
        return text


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.collector.render()
            except Exception as exc:
                log.exception("rendering /metrics failed")
                self._reply(500, f"metrics failed: {exc}\n".encode(), "text/plain")
                return
            self._reply(200, body, CONTENT_TYPE)
        elif path == "/":
            self._reply(200, b'<a href="/metrics">/metrics</a>\n', "text/html")
        else:
            self._reply(404, b"not found; try /metrics\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics http: " + format, *args)


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], collector: MetricsCollector) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.collector = collector
        super().__init__(address, _Handler)


class MetricsServer:
    """Serves ``collector`` on ``http://host:port/metrics`` from a daemon thread."""

    def __init__(self, collector: MetricsCollector, host: str, port: int) -> None:
        host = host.strip("[]")
        if host in ("", "0.0.0.0"):
            host = "0.0.0.0"
        self._httpd = _MetricsHTTPServer((host, port), collector)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="batchwire-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
