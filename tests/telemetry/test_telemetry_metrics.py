"""The /metrics endpoint: Triton-compatible names and values, histograms, the Grafana dashboard."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from batchwire.clients import InferenceClient

DASHBOARD = Path(__file__).resolve().parents[2] / "telemetry" / "grafana-dashboard.json"

REQUIRED = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "batchwire_request_duration_seconds",
    "batchwire_queue_duration_seconds",
    "batchwire_compute_duration_seconds",
    "batchwire_batch_size",
    "batchwire_queue_depth",
    "batchwire_request_failures_total",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """(family name -> type, samples) of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    types: dict[str, str] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"bad exposition line: {line!r}"
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return types, samples


def value(samples, name: str, **labels: str) -> float:
    found = [
        v for n, lbl, v in samples if n == name and all(lbl.get(k) == x for k, x in labels.items())
    ]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


@pytest.fixture()
def metrics_url(telemetry_server) -> str:
    assert telemetry_server.metrics_url is not None
    return telemetry_server.metrics_url


def test_metrics_expose_every_name_and_count_requests(telemetry_server, metrics_url) -> None:
    _, before = scrape(metrics_url)
    n = 12
    with InferenceClient(telemetry_server.address) as client:
        for _ in range(n):
            client.infer("mlp", {"INPUT__0": np.ones((2, 64), np.float32)})
    types, samples = scrape(metrics_url)
    for name in REQUIRED:
        assert name in types, f"{name} missing from /metrics"
    assert types["nv_inference_request_success"] == "counter"
    assert types["batchwire_request_duration_seconds"] == "histogram"
    assert types["nv_inference_pending_request_count"] == "gauge"
    mlp = {"model": "mlp", "version": "1"}

    def delta(name: str, **labels: str) -> float:
        return value(samples, name, **mlp, **labels) - value(before, name, **mlp, **labels)

    assert delta("nv_inference_request_success") == n
    assert delta("nv_inference_count") == 2 * n
    assert 1 <= delta("nv_inference_exec_count") <= n
    assert delta("nv_inference_request_duration_us") > 0
    assert delta("nv_inference_compute_infer_duration_us") > 0
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        value(samples, "nv_inference_request_failure", **mlp, reason=reason)
    # Histograms: cumulative buckets, +Inf == _count == successes, _sum consistent.
    assert delta("batchwire_request_duration_seconds_count") == n
    buckets = [
        (labels["le"], v)
        for name, labels, v in samples
        if name == "batchwire_request_duration_seconds_bucket" and labels["model"] == "mlp"
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == "+Inf"
    assert buckets[-1][1] == value(samples, "batchwire_request_duration_seconds_count", **mlp)
    assert [le for le, _ in buckets][:2] == ["0.0001", "0.00025"]
    assert delta("batchwire_batch_size_sum") == 2 * n
    assert value(samples, "nv_inference_pending_request_count", **mlp) >= 0
    assert value(samples, "batchwire_queue_depth", **mlp, priority="1") >= 0
    assert "process_cpu_seconds_total" in types


def test_grafana_dashboard_queries_only_exported_metrics(metrics_url) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    assert len(exprs) >= 10
    names = set().union(*(metric_names(e) for e in exprs))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "throughput",
        "p50",
        "p99",
        "queue depth",
        "queue wait",
        "batch size",
        "errors",
        "gpu",
    ):
        assert topic in titles, f"no panel about {topic}"
    assert any("histogram_quantile" in e for e in exprs)
    types, _ = scrape(metrics_url)
    exported = set(types)
    for name, kind in types.items():
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    missing = sorted(names - exported)
    assert not missing, f"dashboard queries metrics the server does not export: {missing}"
    assert {"nv_gpu_utilization", "batchwire_request_duration_seconds_bucket"} <= names


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers, ranges, functions and
    grouping clauses removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"\1", expr)  # Grafana's label_values
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group(0)
        following = expr[match.end() :].lstrip()
        if following.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue  # a function call or a keyword
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"$model"}'
        "[$__rate_interval]))) / on (model) b_total + 1e6"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names("label_values(nv_x, model)") == {"nv_x"}


def test_metrics_endpoint_paths_and_disabled_by_default(
    examples_repository, telemetry_server
) -> None:
    from testsupport import start_server

    base = telemetry_server.metrics_url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/nope", timeout=5)
    assert info.value.code == 404
    server = start_server(examples_repository)
    try:
        assert server.server.metrics_port is None and server.metrics_url is None
    finally:
        server.stop()


def test_a_taken_metrics_port_does_not_stop_the_server(examples_repository, caplog) -> None:
    from testsupport import start_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = start_server(examples_repository, metrics_port=taken.getsockname()[1])
        try:
            assert server.metrics_url is None
            with InferenceClient(server.address) as client:
                client.infer("mlp", {"INPUT__0": np.ones((1, 64), np.float32)})
        finally:
            server.stop()
    assert any("metrics endpoint disabled" in r.getMessage() for r in caplog.records)


def test_render_escapes_label_values() -> None:
    from batchwire.telemetry.metrics import Family, render

    family = Family("x_total", "counter", "help")
    family.add({"model": 'a"b\\c\nd'}, 3)
    text = render([family])
    assert 'x_total{model="a\\"b\\\\c\\nd"} 3' in text


def test_gpu_metrics_from_a_fake_nvml(monkeypatch) -> None:
    """NVML is optional and untestable without a GPU: check the reading code on a stand-in."""
    import types

    from batchwire.telemetry.gpu import GpuMonitor
    from batchwire.telemetry.metrics import MetricsCollector

    class NVMLError(Exception):
        pass

    def power(handle: int) -> int:
        if handle == 1:
            raise NVMLError("not supported")
        return 71_500

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}".encode(),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=40 + h),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2**30, total=2**34),
        nvmlDeviceGetPowerUsage=power,
    )
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    monitor = GpuMonitor()
    assert monitor.available
    text = MetricsCollector(list, gpu=monitor, process_metrics=False).render().decode()
    monitor.close()
    assert 'nv_gpu_utilization{gpu_uuid="GPU-0"} 0.4' in text
    assert 'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.41' in text
    assert 'nv_gpu_memory_total_bytes{gpu_uuid="GPU-1"} 17179869184' in text
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-0"} 71.5' in text
    assert 'nv_gpu_power_usage{gpu_uuid="GPU-1"}' not in text  # that read failed: left out


def test_no_nvml_means_empty_gpu_families(monkeypatch) -> None:
    from batchwire.telemetry.gpu import GpuMonitor
    from batchwire.telemetry.metrics import MetricsCollector

    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # import fails
    monitor = GpuMonitor()
    assert not monitor.available and monitor.samples() == []
    text = MetricsCollector(list, gpu=monitor, process_metrics=False).render().decode()
    assert "# TYPE nv_gpu_utilization gauge" in text and "nv_gpu_utilization{" not in text
