"""The audit and drift benchmark's short mode against real servers: every variant
answered requests, the audited ones wrote a log that verifies, and the JSON says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchwire.bench.governance_cost import VARIANTS, serve_args

pytestmark = pytest.mark.slow


def test_short_run_measures_every_variant(tmp_path: Path, perf_analyzer: str) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "batchwire.bench.governance_cost", "--short",
            "--concurrency", "4", "--out", str(out), "--perf-analyzer", perf_analyzer,
        ],
        capture_output=True,
        text=True,
        timeout=420,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((out / "governance_cost.json").read_text())
    assert (out / "governance_cost.png").stat().st_size > 0
    assert set(result["variants"]) == set(VARIANTS) and result["concurrency"] == 4
    (row,) = result["rounds"]
    assert sorted(row["order"]) == sorted(VARIANTS)
    for name in VARIANTS:
        assert row[name]["throughput"] > 0 and row[name]["p99_ms"] >= row[name]["p50_ms"] > 0
    summary = result["summary"]
    both = row["audit_drift"]["throughput"] / row["plain"]["throughput"]
    assert summary["audit_drift"]["ratio"] == pytest.approx(both, abs=1e-4)
    assert "ratio" not in summary["plain"]
    # Every audited server wrote its requests: the warm-up's and the round's at least.
    logs = result["audit_logs"]
    assert set(logs) == {"audit", "audit_payloads", "audit_drift"}
    for figures in logs.values():
        assert figures["files"] >= 1 and figures["lines"] > 100
        assert figures["verified"] is True and figures["problems"] == []
    # Payloads make bigger records than hashes alone.
    assert (
        logs["audit_payloads"]["bytes"] / logs["audit_payloads"]["lines"]
        > logs["audit"]["bytes"] / logs["audit"]["lines"]
    )


def test_the_variants_turn_on_what_they_name(tmp_path: Path) -> None:
    assert serve_args("plain", tmp_path) == ["--drift-statistics=false"]
    assert serve_args("audit_payloads", tmp_path) == [
        "--drift-statistics=false",
        "--audit-log",
        str(tmp_path / "audit-audit_payloads"),
        "--audit-payloads",
    ]
    assert serve_args("audit_drift", tmp_path) == [
        "--drift-statistics=true",
        "--audit-log",
        str(tmp_path / "audit-audit_drift"),
    ]
