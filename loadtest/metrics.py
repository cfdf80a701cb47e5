"""The server's own view of a load test: Prometheus text scraped during the run.

Optional and tolerant: when the metrics URL is missing or unreachable the
sampler records why, and the report says "server metrics not available".
Understood metric names (Triton's, with or without a ``_total`` suffix):
``nv_inference_count`` (inferences = batch items), ``nv_inference_exec_count``
(model executions; count / exec = mean batch size), ``nv_inference_request_success``,
``nv_inference_request_failure``, ``nv_inference_queue_duration_us`` and the other
cumulative ``*_duration_us`` counters, and ``batchwire_batch_size`` (histogram).
Samples are summed over every label except ``model``.
"""

from __future__ import annotations

import itertools
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from batchwire.loadtest.hosts import NotLoopbackError, is_loopback

COUNT = "nv_inference_count"
EXEC_COUNT = "nv_inference_exec_count"
SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
QUEUE_US = "nv_inference_queue_duration_us"
DURATION_COUNTERS = (
    "nv_inference_request_duration_us",
    QUEUE_US,
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
BATCH_SIZE = "batchwire_batch_size"

#: (sample name, model) -> value; model "" when the sample has no model label.
Values = dict[tuple[str, str], float]


def check_metrics_url(url: str) -> str:
    """``url`` when it is http(s) on a loopback host; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"metrics URL must be http://host:port/path, got {url!r}")
    if not is_loopback(parts.hostname):
        raise NotLoopbackError(
            f"refusing to scrape {parts.hostname!r}: metrics URLs must be on this machine "
            "(127.0.0.0/8, ::1 or localhost)"
        )
    return url


def parse_metrics(text: str) -> Values:
    """Prometheus text -> summed values by (sample name without ``_total``, model)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: Values = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.endswith("_created"):
                continue
            name = name.removesuffix("_total")
            if name.endswith("_bucket"):
                le = sample.labels.get("le", "")
                name = f"{name}:{le}"
            values[(name, sample.labels.get("model", ""))] += float(sample.value)
    return dict(values)


def scrape(url: str, timeout: float = 2.0) -> Values:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode("utf-8", "replace"))


@dataclass
class Snapshot:
    time: float
    values: Values


@dataclass
class MetricsSampler:
    """Scrapes ``url`` every ``interval`` seconds in a daemon thread."""

    url: str | None
    interval: float = 1.0
    snapshots: list[Snapshot] = field(default_factory=list)
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> bool:
        if self.url is None:
            return False
        try:
            values = scrape(self.url)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self.error = f"{self.url}: {getattr(exc, 'reason', None) or exc}"
            return False
        self.snapshots.append(Snapshot(time.time(), values))
        return True

    def start(self) -> MetricsSampler:
        if self.url is None:
            self.error = "no metrics URL given (--metrics-url)"
            return self
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> MetricsSampler:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self.sample()  # the final state, after the load stopped
        return self

    @property
    def available(self) -> bool:
        return len(self.snapshots) >= 2

    def summary(self) -> ServerView:
        return ServerView.from_snapshots(self.snapshots, self.error)


@dataclass
class ModelView:
    """Server-side totals for one model over the sampled window."""

    model: str
    inferences: float = 0.0
    executions: float = 0.0
    successes: float | None = None
    failures: float | None = None
    #: duration counter name -> mean µs per request
    mean_us: dict[str, float] = field(default_factory=dict)
    batch_size_mean: float | None = None

    @property
    def mean_batch(self) -> float | None:
        return self.inferences / self.executions if self.executions else None


@dataclass
class ServerView:
    available: bool
    reason: str | None
    start: float | None = None
    end: float | None = None
    models: dict[str, ModelView] = field(default_factory=dict)
    #: model -> [(time, inferences/s, mean batch size or None, mean queue µs or None)]
    series: dict[str, list[tuple[float, float, float | None, float | None]]] = field(
        default_factory=dict
    )

    @classmethod
    def from_snapshots(cls, snapshots: list[Snapshot], error: str | None) -> ServerView:
        if len(snapshots) < 2:
            return cls(False, error or "fewer than two scrapes succeeded")
        first, last = snapshots[0], snapshots[-1]
        models = sorted({model for (_, model) in last.values if model})
        if not any((COUNT, m) in last.values for m in models):
            return cls(False, f"no {COUNT} samples with a model label in the scraped metrics")
        view = cls(True, error, first.time, last.time)

        def delta(a: Snapshot, b: Snapshot, name: str, model: str) -> float | None:
            if (name, model) not in b.values:
                return None
            return b.values[(name, model)] - a.values.get((name, model), 0.0)

        for model in models:
            mv = ModelView(model)
            mv.inferences = delta(first, last, COUNT, model) or 0.0
            mv.executions = delta(first, last, EXEC_COUNT, model) or 0.0
            mv.successes = delta(first, last, SUCCESS, model)
            mv.failures = delta(first, last, FAILURE, model)
            requests = mv.successes if mv.successes else None
            for name in DURATION_COUNTERS:
                total = delta(first, last, name, model)
                if total is not None and requests:
                    mv.mean_us[name] = total / requests
            bs_sum = delta(first, last, f"{BATCH_SIZE}_sum", model)
            bs_count = delta(first, last, f"{BATCH_SIZE}_count", model)
            if bs_sum is not None and bs_count:
                mv.batch_size_mean = bs_sum / bs_count
            if mv.inferences or mv.executions or requests:
                view.models[model] = mv
            points = []
            for a, b in itertools.pairwise(snapshots):
                dt = b.time - a.time
                if dt <= 0:
                    continue
                count = delta(a, b, COUNT, model) or 0.0
                execs = delta(a, b, EXEC_COUNT, model) or 0.0
                succ = delta(a, b, SUCCESS, model)
                queue = delta(a, b, QUEUE_US, model)
                mean_batch = count / execs if execs else None
                mean_queue = queue / succ if queue is not None and succ else None
                points.append((b.time, count / dt, mean_batch, mean_queue))
            if model in view.models:
                view.series[model] = points
        if not view.models:
            return cls(False, "the server counted no inferences during the run")
        return view
