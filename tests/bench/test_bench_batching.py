"""The batching benchmark runs end to end and writes its figures (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_json_and_plot(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchwire.bench.batching", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for key in (
        "cnn_served_over_raw",
        "mlp_over_null",
        "low_load_overhead_ms",
        "null_over_bare_grpc",
        "mlp_stream_over_bare_stream",
        "low_load_overhead_over_bare_grpc_ms",
    ):
        assert key in result.stdout
    report = json.loads((tmp_path / "batching.json").read_text())
    assert set(report["ratios"]) == {"cnn_served_over_raw", "mlp_over_null", "low_load_overhead_ms"}
    assert all(isinstance(v, float) for v in report["ratios"].values())
    windows = report["windows"]
    assert set(windows) == {
        "low_load_mlp",
        "low_load_bare",
        "mlp_c32",
        "null_c32",
        "cnn_saturation",
        "bare_grpc_c32",
        "mlp_stream_c32",
        "bare_stream_c32",
    }
    for window in windows.values():
        assert window["requests"] > 0 and window["errors"] == 0
    assert len(report["rounds"]) == report["plan"]["rounds"] == 1
    # The server reports statistics, so served windows carry a mean batch size.
    assert windows["mlp_c32"]["mean_batch"] >= 1.0
    assert {(row["model"], row["concurrency"]) for row in report["sweep"]} == {
        ("mlp", 1),
        ("mlp", 8),
    }
    png = (tmp_path / "batching.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
