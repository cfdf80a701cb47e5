"""Per-model-version counters fed by the batcher's observer hooks.

One :class:`ModelStats` per model version holds plain Python integers (no
locks, no label lookups): every update happens on the event loop thread, where
the batcher calls the observer. Readers (the ModelStatistics RPC on the loop,
the /metrics scrape in its own thread) only read them; a scrape may see one
request half-counted, never a torn integer (the GIL makes each read atomic).

Per request (:meth:`ModelObserver.request_finished`): a handful of integer
additions and two ``bisect`` calls into fixed bucket bounds. Per batch
(:meth:`ModelObserver.batch_executed`): the compute-phase totals (Triton's
per-request compute statistics are batch time x requests in the batch), the
execution and item counts, the per-batch-size statistics and two histograms.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchwire.core.errors import InferenceError
    from batchwire.core.observer import BatchRecord
    from batchwire.core.types import InferenceRequest
    from batchwire.telemetry.tracing import Tracing

log = logging.getLogger(__name__)

_perf_ns = time.perf_counter_ns

#: Latency histogram bucket bounds in seconds (millisecond targets: 0.1 ms .. 2.5 s).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
#: The same bounds in nanoseconds (what the batcher measures in).
LATENCY_BUCKETS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)
#: Batch-size histogram bucket bounds (items per executed batch).
BATCH_SIZE_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: InferenceError.reason -> Triton's nv_inference_request_failure reason label.
TRITON_FAILURE_REASONS: dict[str, str] = {
    "rejected": "REJECTED",
    "timeout": "REJECTED",
    "cancelled": "CANCELED",
    "deadline_exceeded": "CANCELED",
    "backend": "BACKEND",
}
#: Every Triton reason label, exported even at zero so dashboards see the series.
TRITON_REASON_LABELS: tuple[str, ...] = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


#: Attribute set on an error the observer has counted (see :func:`was_counted`).
_COUNTED = "_batchwire_counted"


def was_counted(error: BaseException) -> bool:
    """True when an observer counted ``error`` (the batcher reported it)."""
    return getattr(error, _COUNTED, False)


def triton_reason(reason: str) -> str:
    """Triton's failure reason label for an :class:`InferenceError` reason."""
    return TRITON_FAILURE_REASONS.get(reason, "OTHER")


class ModelStats:
    """Cumulative statistics of one model version (Triton's ModelStatistics, plus histograms).

    Durations are nanoseconds. ``queue``/``compute_*`` count successful requests,
    as in Triton; compute times are the batch's, counted once per request in it.
    """

    __slots__ = (
        "batch_hist",
        "batch_items",
        "batch_stats",
        "cache_bytes",
        "cache_entries",
        "cache_evictions",
        "cache_hit_count",
        "cache_hit_ns",
        "cache_miss_count",
        "cache_miss_ns",
        "coalesced_count",
        "coalescing",
        "compute_count",
        "compute_hist",
        "compute_hist_ns",
        "compute_infer_ns",
        "compute_input_ns",
        "compute_output_ns",
        "depth",
        "execution_count",
        "fail_count",
        "fail_ns",
        "failures",
        "hang_events",
        "hung_instances",
        "inference_count",
        "last_ns",
        "model",
        "queue_hist",
        "queue_ns",
        "request_hist",
        "response_cache",
        "success_count",
        "success_ns",
        "version",
    )

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_ns = 0
        self.compute_count = 0
        self.compute_input_ns = 0
        self.compute_infer_ns = 0
        self.compute_output_ns = 0
        self.inference_count = 0
        self.execution_count = 0
        #: perf_counter_ns of the last request answered (0: none yet).
        self.last_ns = 0
        #: batch size (items) -> [executions, input ns, infer ns, output ns]
        self.batch_stats: dict[int, list[int]] = {}
        #: InferenceError.reason -> failed requests
        self.failures: dict[str, int] = {}
        #: priority level -> requests queued
        self.depth: dict[int, int] = {}
        #: Instances running a batch past the hang timeout now, and hangs seen so far.
        self.hung_instances = 0
        self.hang_events = 0
        buckets = len(LATENCY_BUCKETS_NS) + 1
        #: Non-cumulative bucket counts; the last one is +Inf.
        self.request_hist = [0] * buckets
        self.queue_hist = [0] * buckets
        self.compute_hist = [0] * buckets
        self.compute_hist_ns = 0
        self.batch_hist = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self.batch_items = 0
        # Response cache and coalescing (batchwire.server.response_cache_stage): set when
        # the version's responses are cached / its identical requests coalesced.
        self.response_cache = False
        self.coalescing = False
        self.cache_hit_count = 0
        self.cache_hit_ns = 0
        #: Successful requests computed and stored; ns spent looking up and storing.
        self.cache_miss_count = 0
        self.cache_miss_ns = 0
        #: Requests answered by an identical request's run (followers).
        self.coalesced_count = 0
        #: The version's entries in the response cache now, their bytes, and evictions.
        self.cache_entries = 0
        self.cache_bytes = 0
        self.cache_evictions = 0

    @property
    def pending(self) -> int:
        """Requests queued now, all priority levels."""
        return sum(self.depth.values())

    def _answered(self, duration_ns: int) -> None:
        """A success the batcher never saw: no queue time, no compute (as Triton's hits)."""
        self.last_ns = _perf_ns()
        self.success_count += 1
        self.success_ns += duration_ns
        self.request_hist[bisect_left(LATENCY_BUCKETS_NS, duration_ns)] += 1
        self.queue_hist[0] += 1

    def count_cache_hit(self, duration_ns: int) -> None:
        """A request answered from the response cache in ``duration_ns``."""
        self._answered(duration_ns)
        self.cache_hit_count += 1
        self.cache_hit_ns += duration_ns

    def count_cache_miss(self, duration_ns: int) -> None:
        """A computed request stored; ``duration_ns`` looking up and storing (Triton adds
        it to the request's duration too)."""
        self.cache_miss_count += 1
        self.cache_miss_ns += duration_ns
        self.success_ns += duration_ns

    def count_coalesced(self, duration_ns: int) -> None:
        """A request answered by an identical request's run, after ``duration_ns``."""
        self._answered(duration_ns)
        self.coalesced_count += 1


class ModelObserver:
    """The :class:`~batchwire.core.observer.BatchObserver` of one model version.

    Feeds :class:`ModelStats` and, for batches holding traced requests, the
    tracing pipeline. Cheap, and never raises (errors are logged once).
    """

    __slots__ = ("_complained", "stats", "tracing")

    def __init__(self, stats: ModelStats, tracing: Tracing | None = None) -> None:
        self.stats = stats
        self.tracing = tracing
        self._complained = False

    def request_finished(self, request: InferenceRequest, error: InferenceError | None) -> None:
        try:
            timings = request.timings
            now = _perf_ns()
            stats = self.stats
            stats.last_ns = now
            received = timings.received_ns
            if error is None:
                duration = now - received
                stats.success_count += 1
                stats.success_ns += duration
                stats.request_hist[bisect_left(LATENCY_BUCKETS_NS, duration)] += 1
                queued = timings.queue_ns
                stats.queue_ns += queued
                stats.queue_hist[bisect_left(LATENCY_BUCKETS_NS, queued)] += 1
            else:
                stats.fail_count += 1
                if received:
                    stats.fail_ns += now - received
                failures = stats.failures
                reason = error.reason
                failures[reason] = failures.get(reason, 0) + 1
                # The front end counts the errors the batcher never reported (decode,
                # validation); this mark tells the two apart.
                setattr(error, _COUNTED, True)
        except Exception:
            self._complain("request_finished")

    def request_rejected(self, error: InferenceError) -> None:
        """Count a failed request the batcher did not report (decode, validation); once."""
        if was_counted(error):
            return
        try:
            setattr(error, _COUNTED, True)
            stats = self.stats
            stats.fail_count += 1
            stats.last_ns = _perf_ns()
            failures = stats.failures
            failures[error.reason] = failures.get(error.reason, 0) + 1
        except Exception:
            self._complain("request_rejected")

    def batch_executed(self, record: BatchRecord) -> None:
        try:
            stats = self.stats
            input_ns = record.compute_input_ns
            infer_ns = record.compute_infer_ns
            output_ns = record.compute_output_ns
            compute = input_ns + infer_ns + output_ns
            stats.compute_hist[bisect_left(LATENCY_BUCKETS_NS, compute)] += 1
            stats.compute_hist_ns += compute
            size = record.size
            stats.batch_hist[bisect_left(BATCH_SIZE_BUCKETS, size)] += 1
            stats.batch_items += size
            if record.error is None:
                requests = record.request_count
                stats.execution_count += 1
                stats.inference_count += size
                stats.compute_count += requests
                stats.compute_input_ns += input_ns * requests
                stats.compute_infer_ns += infer_ns * requests
                stats.compute_output_ns += output_ns * requests
                row = stats.batch_stats.get(size)
                if row is None:
                    row = stats.batch_stats[size] = [0, 0, 0, 0]
                row[0] += 1
                row[1] += input_ns
                row[2] += infer_ns
                row[3] += output_ns
            if record.trace_contexts and self.tracing is not None:
                self.tracing.batch_span(record)
        except Exception:
            self._complain("batch_executed")

    def queue_changed(self, model: str, version: str, priority: int, depth: int) -> None:
        self.stats.depth[priority] = depth

    def hang_changed(self, model: str, version: str, hung: int, new_hangs: int) -> None:
        """The batcher's hang watchdog: ``hung`` instances hung now, ``new_hangs`` just now."""
        self.stats.hung_instances = hung
        self.stats.hang_events += new_hangs

    def _complain(self, where: str) -> None:
        if not self._complained:
            self._complained = True
            log.exception(
                "telemetry observer of model '%s' version %s failed in %s (logged once)",
                self.stats.model,
                self.stats.version,
                where,
            )


def statistics_dict(stats: ModelStats, epoch_offset_ns: int) -> dict[str, Any]:
    """``stats`` in the JSON shape of Triton's ``ModelStatistics`` message.

    ``epoch_offset_ns`` converts perf_counter_ns to Unix-epoch nanoseconds.
    """

    def duration(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    last_ms = (stats.last_ns + epoch_offset_ns) // 1_000_000 if stats.last_ns else 0
    compute = stats.compute_count
    return {
        "name": stats.model,
        "version": stats.version,
        "last_inference": last_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": duration(stats.success_count, stats.success_ns),
            "fail": duration(stats.fail_count, stats.fail_ns),
            "queue": duration(stats.success_count, stats.queue_ns),
            "compute_input": duration(compute, stats.compute_input_ns),
            "compute_infer": duration(compute, stats.compute_infer_ns),
            "compute_output": duration(compute, stats.compute_output_ns),
            "cache_hit": duration(stats.cache_hit_count, stats.cache_hit_ns),
            "cache_miss": duration(stats.cache_miss_count, stats.cache_miss_ns),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": duration(row[0], row[1]),
                "compute_infer": duration(row[0], row[2]),
                "compute_output": duration(row[0], row[3]),
            }
            for size, row in sorted(stats.batch_stats.items())
        ],
    }
