"""The traffic split and shadow benchmark's short mode against a real server: every variant
answered requests, the shadow variant really ran its copies, and the JSON says so."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from batchwire.bench.versions_cost import CACHED, VARIANTS, export_variants

pytestmark = pytest.mark.slow


def test_short_run_measures_every_variant(tmp_path: Path, perf_analyzer: str) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "batchwire.bench.versions_cost", "--short",
            "--concurrency", "4", "--out", str(out), "--perf-analyzer", perf_analyzer,
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((out / "versions_cost.json").read_text())
    assert (out / "versions_cost.png").stat().st_size > 0
    assert result["variants"] == VARIANTS and result["concurrency"] == 4
    (row,) = result["rounds"]
    assert sorted(row["order"]) == sorted(VARIANTS)
    for name in VARIANTS:
        assert row[name]["throughput"] > 0 and row[name]["p99_ms"] >= row[name]["p50_ms"] > 0
    summary = result["summary"]
    ratio = row["mlp_split"]["throughput"] / row["mlp"]["throughput"]
    assert summary["mlp_split"]["ratio"] == pytest.approx(ratio, abs=1e-4)
    assert "ratio" not in summary["mlp"] and "ratio" not in summary["mlp_distinct"]
    misses = row["mlp_cache_misses"]["throughput"] / row["mlp_distinct"]["throughput"]
    assert summary["mlp_cache_misses"]["ratio"] == pytest.approx(misses, abs=1e-4)
    assert set(summary) == set(VARIANTS)


def test_the_variants_serve_as_declared(tmp_path: Path) -> None:
    from batchwire.server.repository import ModelRepository

    export_variants(tmp_path)
    repository = ModelRepository(tmp_path)
    for name, parameters in VARIANTS.items():
        entry = repository.discover_model(name)
        assert not entry.error, entry.error
        versions = sorted(source.version for source in entry.versions)
        assert versions == (["1"] if not parameters else ["1", "2"])
        spec = entry.versions[0].spec
        assert {k: v for k, v in spec.parameters.items() if k in parameters} == parameters
        assert re.fullmatch(r"mlp(_\w+)?", spec.name)
        config = entry.versions[0].config
        assert config.response_cache.enable == (name in CACHED)
