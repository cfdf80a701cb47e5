"""The tracing-overhead benchmark runs end to end and writes its report (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchwire.bench.tracing_overhead import TARGET, run

pytestmark = pytest.mark.slow


def test_tracing_overhead_benchmark_writes_json_and_png(
    tmp_path: Path, examples_repository: Path
) -> None:
    report = run(
        tmp_path,
        seconds=0.3,
        warmup=0.1,
        rounds=2,
        concurrency=8,
        rate=2,
        exporter="none",
        in_process=True,
        repository=examples_repository,
        load="python",
    )
    saved = json.loads((tmp_path / "tracing_overhead.json").read_text())
    assert saved["ratio"] == report["ratio"] and saved["target"] == TARGET
    assert saved["trace_rate"] == 2 and saved["load_generator"] == "python"
    assert [w["mode"] for w in saved["windows"]] == ["untraced", "traced"] * 2
    q1, median, q3 = saved["round_ratio_quartiles"]
    assert q1 <= median <= q3 and abs(median - saved["round_ratio"]) <= 0.001
    assert all(w["requests"] > 0 and w["errors"] == 0 for w in saved["windows"])
    # Items per execution, read from the server's ModelStatistics around each window.
    assert all(w["mean_batch"] >= 1 for w in saved["windows"])
    assert set(saved["mean_batch"]) == {"untraced", "traced"}
    assert saved["untraced_rps"] > 0 and saved["traced_rps"] > 0
    png = (tmp_path / "tracing_overhead.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_tracing_overhead_benchmark_splits_cpu_by_process_and_every_span_arrives(
    tmp_path: Path, examples_repository: Path
) -> None:
    """A server process exporting to the benchmark's own receiver process: each
    window's CPU is split between the server, its span exporter and the receiver."""
    report = run(
        tmp_path,
        seconds=0.3,
        warmup=0.1,
        rounds=1,
        concurrency=4,
        exporter="otlp-grpc",
        repository=examples_repository,
        load="python",
    )
    parts = {"server", "exporter", "receiver"}
    assert set(report["cpu_us_per_request"]) == {"untraced", "traced"}
    assert all(set(p) == parts for p in report["cpu_us_per_request"].values())
    assert set(report["tracing_cpu_us_per_request"]) == parts
    for window in report["windows"]:
        cpu = window["cpu_us_per_request"]
        assert all(value >= 0 for value in cpu.values())
        assert window["server_cpu_us_per_request"] == round(cpu["server"] + cpu["exporter"], 1)
    traced = next(w for w in report["windows"] if w["mode"] == "traced")
    # Every traced request's span (and its batch spans) reached the receiver.
    assert report["spans_received"] > traced["requests"]


def test_tracing_overhead_benchmark_refuses_a_rate_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rate must be >= 1"):
        run(tmp_path, rate=0, in_process=True)


def test_tracing_overhead_benchmark_under_perf_analyzer_counts_windows_on_the_server(
    tmp_path: Path,
    examples_repository: Path,
    perf_analyzer: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """By default (load ``auto``) the benchmark finds perf_analyzer and uses it."""
    monkeypatch.setenv("BATCHWIRE_PERF_ANALYZER", perf_analyzer)
    report = run(
        tmp_path,
        seconds=0.5,
        warmup=0.2,
        rounds=2,
        concurrency=8,
        exporter="otlp-grpc",
        repository=examples_repository,
    )
    assert report["load_generator"] == "perf_analyzer"
    # No client latencies: perf_analyzer reports none per window.
    assert report["latency_ms"] is None
    assert [w["mode"] for w in report["windows"]] == ["untraced", "traced"] * 2
    for window in report["windows"]:
        assert window["requests"] > 0 and window["errors"] == 0
        # Requests the server answered over the window's (rounded) length.
        assert window["throughput"] == pytest.approx(window["requests"] / window["seconds"], 1e-2)
        assert window["mean_batch"] >= 1
    traced = [w for w in report["windows"] if w["mode"] == "traced"]
    assert report["spans_received"] > sum(w["requests"] for w in traced)


def test_tracing_overhead_benchmark_falls_back_to_its_own_client_without_perf_analyzer(
    tmp_path: Path, examples_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "perf_analyzer"
    broken.write_text("#!/bin/sh\nexit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("BATCHWIRE_PERF_ANALYZER", str(broken))
    monkeypatch.setenv("PATH", str(tmp_path))  # the broken one is the only one there
    monkeypatch.chdir(tmp_path)  # no .venv-perf here
    report = run(
        tmp_path / "out",
        seconds=0.2,
        warmup=0.1,
        rounds=1,
        concurrency=4,
        exporter="none",
        in_process=True,
        repository=examples_repository,
    )
    assert report["load_generator"] == "python"
    assert report["latency_ms"]["traced"]["p50_ms"] > 0
    assert all(w["requests"] > 0 for w in report["windows"])


def test_tracing_overhead_benchmark_names_what_is_wrong_with_its_load_generator(
    tmp_path: Path,
) -> None:
    with pytest.raises(
        ValueError, match="load must be 'auto', 'python' or 'perf_analyzer', got 'wrk'"
    ):
        run(tmp_path, load="wrk", in_process=True)
    with pytest.raises(ValueError, match="cannot send a traceparent"):
        run(tmp_path, load="perf_analyzer", traceparent=True, in_process=True)
    missing = str(tmp_path / "no-such-perf_analyzer")
    with pytest.raises(ValueError, match="no perf_analyzer executable at"):
        run(tmp_path, load="perf_analyzer", perf_analyzer=missing, in_process=True)
    # An executable that exits with an error (as perf_analyzer does without libcudart).
    broken = tmp_path / "perf_analyzer"
    broken.write_text("#!/bin/sh\necho 'cannot open shared object file' >&2\nexit 127\n")
    broken.chmod(0o755)
    with pytest.raises(ValueError, match=r"does not run \(exit status 127\): cannot open shared"):
        run(tmp_path, load="perf_analyzer", perf_analyzer=str(broken), in_process=True)
