"""Load-test building blocks that need no server: targets, SLO files, histograms, metrics."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from batchwire.loadtest.hosts import NotLoopbackError, is_loopback, normalize_target
from batchwire.loadtest.latency import Histogram, LatencyRecorder, bucket_us
from batchwire.loadtest.metrics import MetricsSampler, ServerView, check_metrics_url, parse_metrics
from batchwire.loadtest.runner import LoadTestOptions, UsageError, parse_duration, plan
from batchwire.loadtest.slo import SLOError, evaluate, load_slo, parse_slo
from batchwire.loadtest.workloads import WORKLOADS, parse_weighted_models

# Targets ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),
        ("127.3.4.5:9000", "127.3.4.5:9000"),
        ("localhost:8001", "localhost:8001"),
        ("grpc://127.0.0.1:8001", "127.0.0.1:8001"),
        ("[::1]:8001", "[::1]:8001"),
        ("127.0.0.1", "127.0.0.1:8001"),
    ],
)
def test_loopback_targets_are_accepted(target: str, expected: str) -> None:
    assert normalize_target(target) == expected


@pytest.mark.parametrize(
    "target",
    ["10.0.0.1:8001", "192.168.1.2:8001", "example.com:8001", "[2001:db8::1]:8001", "0.0.0.0:8001"],
)
def test_other_targets_are_refused(target: str) -> None:
    with pytest.raises(NotLoopbackError, match="refusing to send load"):
        normalize_target(target)
    assert not is_loopback(target.rsplit(":", 1)[0].strip("[]"))


def test_metrics_url_must_be_loopback_http() -> None:
    assert check_metrics_url("http://127.0.0.1:8002/metrics")
    with pytest.raises(NotLoopbackError):
        check_metrics_url("http://10.0.0.1:8002/metrics")
    with pytest.raises(ValueError, match="http://"):
        check_metrics_url("ftp://127.0.0.1/metrics")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2m", 120), ("1m30s", 90), ("90", 90), ("1h", 3600), ("500ms", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5s", "0s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_models_and_weights() -> None:
    assert parse_weighted_models("mlp, text") == {"mlp": 1, "text": 1}
    assert parse_weighted_models("mlp:3,cnn") == {"mlp": 3, "cnn": 1}
    assert parse_weighted_models("") == {"mlp": 1, "text": 1}
    # Any name: whether the server serves it is asked of the server (test_loadtest_any_model).
    assert parse_weighted_models("mlp,resnet:2") == {"mlp": 1, "resnet": 2}
    with pytest.raises(ValueError, match="positive integer"):
        parse_weighted_models("mlp:0")
    with pytest.raises(ValueError, match="model 'mlp' is listed twice"):
        parse_weighted_models("mlp,mlp:2")
    with pytest.raises(ValueError, match="no model name in ':3'"):
        parse_weighted_models("mlp,:3")


def test_workloads_are_realistic_and_varied() -> None:
    text = WORKLOADS["text"].build_pool(seed=3)
    lengths = {request.inputs[0].shape[1] for request in text}
    batches = {request.inputs[0].shape[0] for request in text}
    assert min(lengths) >= 4 and max(lengths) <= 64 and len(lengths) > 10
    assert batches == {1, 2, 3, 4}
    for request in WORKLOADS["cnn"].build_pool(seed=3, size=4):
        assert list(request.inputs[0].shape[1:]) == [3, 64, 64]
        assert len(request.raw_input_contents[0]) == 4 * request.inputs[0].shape[0] * 3 * 64 * 64


# SLO files ---------------------------------------------------------------------


def test_the_shipped_slo_file_is_valid() -> None:
    spec = load_slo(known_models=set(WORKLOADS))
    assert spec.source == "loadtest/slo.toml"
    assert set(spec.models) == set(WORKLOADS)
    for targets in spec.models.values():
        assert targets.latency_ms["p50_ms"] < targets.latency_ms["p99_ms"]
        assert targets.max_failure_ratio == 0.0


def test_every_problem_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
version = 1
[models.mlp]
p99_ms = -3
min_rps = "fast"
p42_ms = 1
[models.text]
max_failure_ratio = 1.5
[models.resnet]
p50_ms = 5
"""
    )
    with pytest.raises(SLOError) as caught:
        load_slo(path, known_models=set(WORKLOADS))
    message = str(caught.value)
    assert f"{path}: models.mlp.p99_ms must be a positive number, got -3" in message
    assert "models.mlp.min_rps must be a number >= 0, got 'fast'" in message
    assert "models.mlp.p42_ms: unknown key" in message
    assert "models.text.max_failure_ratio must be a number between 0 and 1, got 1.5" in message
    assert "models.resnet: no workload for model 'resnet'" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[models.mlp]\np50_ms = 1\n", "missing 'version'"),
        ("version = 2\n[models.mlp]\np50_ms = 1\n", "version must be 1, got 2"),
        ("version = 1\n", "missing [models.<name>] tables"),
        ("version = 1\n[models.mlp]\n", "models.mlp has no targets"),
        ("version = 1\n[models.mlp\np50_ms = 1\n", "not valid TOML"),
        ("version = 1\nmodel = 3\n[models.mlp]\np50_ms = 1\n", "model: unknown key"),
        (
            "version = 1\n[models.mlp]\np50_ms = true\n",
            "p50_ms must be a positive number, got True",
        ),
    ],
)
def test_malformed_slo_files(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "slo.toml"
    path.write_text(text)
    with pytest.raises(SLOError) as caught:
        load_slo(path, known_models=set(WORKLOADS))
    assert problem in str(caught.value)


def test_missing_slo_file(tmp_path: Path) -> None:
    with pytest.raises(SLOError, match="cannot read the file"):
        load_slo(tmp_path / "nope.toml")


def test_plan_validates_before_anything_runs(tmp_path: Path) -> None:
    slo = tmp_path / "slo.toml"
    slo.write_text("version = 1\n[models.mlp]\np99_ms = -3\n")
    with pytest.raises(UsageError, match=r"models\.mlp\.p99_ms must be a positive number, got -3"):
        plan(LoadTestOptions(slo=slo, out=tmp_path / "out"))
    with pytest.raises(UsageError, match="refusing"):
        plan(LoadTestOptions(host="10.0.0.1:8001", out=tmp_path / "out"))
    with pytest.raises(UsageError, match="--workers"):
        plan(LoadTestOptions(users=1, workers=2, out=tmp_path / "out"))
    with pytest.raises(UsageError, match="--warmup"):
        plan(LoadTestOptions(duration="5s", warmup="5s", out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    ok = plan(LoadTestOptions(models="mlp:2,text", users=4, spawn_rate=2, duration="10s"))
    assert ok.models == ["mlp", "text"] and ok.model_arg == "mlp:2,text"
    assert ok.warmup_s == 2 and ok.duration_s == 10


# Histograms and evaluation --------------------------------------------------------


def test_buckets_keep_three_significant_digits() -> None:
    assert bucket_us(0.0004) == 0
    assert bucket_us(0.5) == 500
    assert bucket_us(1.2345) == 1230
    assert bucket_us(42.16) == 42200
    assert bucket_us(1234.5) == 1230000


def test_percentiles_are_sub_millisecond() -> None:
    h = Histogram()
    for value in range(1, 101):  # 0.01 .. 1.00 ms
        h.add(value / 100)
    assert h.percentile_ms(0.5) == pytest.approx(0.50)
    assert h.percentile_ms(0.99) == pytest.approx(0.99)
    assert h.percentile_ms(1.0) == pytest.approx(1.0)
    assert Histogram().percentile_ms(0.5) is None


def _recorder() -> LatencyRecorder:
    recorder = LatencyRecorder()
    recorder.start_time, recorder.stop_time = 1000.0, 1010.0
    for second in range(1000, 1010):
        for i in range(100):
            recorder.record("mlp", 1.0 + i / 100, at=second + 0.5)
        recorder.record("mlp", 5.0, at=second + 0.5, status="UNAVAILABLE")
    return recorder


def test_worker_deltas_merge_exactly() -> None:
    whole = _recorder()
    master = LatencyRecorder()
    for part in (_recorder(), _recorder()):
        master.merge_json(part.to_json())
    a, b = whole.window(["mlp"]), master.window(["mlp"])
    assert b.requests == 2 * a.requests and b.failures == {"UNAVAILABLE": 20}
    assert b.latency.percentile_ms(0.99) == a.latency.percentile_ms(0.99)


def test_evaluation_lines_name_each_target() -> None:
    spec = parse_slo(
        {
            "version": 1,
            "models": {
                "mlp": {"p50_ms": 10, "p99_ms": 1.5, "min_rps": 50, "max_failure_ratio": 0.1},
                "cnn": {"p99_ms": 50},
            },
        },
        "test.toml",
    )
    evaluation = evaluate(spec, _recorder(), ["mlp"], window_start=1000.0, window_end=1010.0)
    lines = evaluation.lines()
    assert "PASS mlp p50 1.49 ms <= target 10 ms" in lines
    assert "FAIL mlp p99 1.98 ms > target 1.5 ms" in lines
    assert "PASS mlp rps 100 req/s >= target 50 req/s" in lines
    assert "PASS mlp failure ratio 0.99% <= target 10%" in lines
    assert "SKIP cnn: not part of this run" in lines
    assert not evaluation.passed and [c.metric for c in evaluation.failures()] == ["p99"]


def test_a_model_without_requests_fails() -> None:
    spec = parse_slo({"version": 1, "models": {"text": {"p99_ms": 10}}}, "test.toml")
    evaluation = evaluate(spec, _recorder(), ["text"], window_start=1000.0, window_end=1010.0)
    assert not evaluation.passed
    assert "FAIL text p99: no successful requests measured (target <= 10 ms)" in evaluation.lines()


# Server metrics ------------------------------------------------------------------

METRICS = """\
# TYPE nv_inference_count counter
nv_inference_count{{model="mlp",version="1"}} {count}
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{{model="mlp",version="1"}} {execs}
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="mlp",version="1"}} {count}
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{{model="mlp",version="1"}} {queue}
# TYPE batchwire_batch_size histogram
batchwire_batch_size_bucket{{model="mlp",le="1.0"}} 0
batchwire_batch_size_bucket{{model="mlp",le="+Inf"}} {execs}
batchwire_batch_size_sum{{model="mlp"}} {count}
batchwire_batch_size_count{{model="mlp"}} {execs}
"""


def test_parse_metrics_sums_over_labels_but_model() -> None:
    values = parse_metrics(METRICS.format(count=40, execs=10, queue=2000))
    assert values[("nv_inference_count", "mlp")] == 40
    assert values[("batchwire_batch_size_sum", "mlp")] == 40
    assert values[("batchwire_batch_size_bucket:+Inf", "mlp")] == 10


def test_sampler_reads_a_live_endpoint_and_tolerates_a_dead_one() -> None:
    state = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["n"] += 1
            n = state["n"]
            body = METRICS.format(count=40 * n, execs=10 * n, queue=2000 * n).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        sampler = MetricsSampler(url, interval=0.05).start()
        threading.Event().wait(0.3)
        view = sampler.stop().summary()
    finally:
        server.shutdown()
        server.server_close()
    assert view.available, view.reason
    mlp = view.models["mlp"]
    assert mlp.mean_batch == pytest.approx(4.0)
    assert mlp.batch_size_mean == pytest.approx(4.0)
    assert mlp.mean_us["nv_inference_queue_duration_us"] == pytest.approx(50.0)
    assert all(point[2] == pytest.approx(4.0) for point in view.series["mlp"])

    dead = MetricsSampler(url, interval=0.05).start()
    threading.Event().wait(0.1)
    view = dead.stop().summary()
    assert not view.available and url in (view.reason or "")
    assert not MetricsSampler(None).start().stop().summary().available
    assert ServerView.from_snapshots([], None).reason


# The command line -------------------------------------------------------------------


def test_register_adds_the_loadtest_command(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from batchwire.loadtest.cli import register

    app = typer.Typer()

    @app.command()
    def serve() -> None:
        """Stands in for the real ``batchwire serve``."""

    register(app)
    runner = CliRunner()
    help_text = runner.invoke(app, ["loadtest", "--help"], terminal_width=200).output
    for option in ("--host", "--slo", "--users", "--spawn-rate", "--duration", "--models",
                   "--mode", "--out", "--workers", "--metrics-url", "--model-repository",
                   "--shape", "--batch-size", "--input-data"):  # fmt: skip
        assert option in help_text
    slo = tmp_path / "slo.toml"
    slo.write_text("version = 1\n[models.mlp]\np99_ms = -3\n")
    result = runner.invoke(app, ["loadtest", "--slo", str(slo), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "models.mlp.p99_ms must be a positive number, got -3" in result.output
    assert not (tmp_path / "out").exists()
