"""The soak's short mode runs end to end: every request gets one outcome, nothing is lost,
the server's counters agree with the client's, resource bounds are reported (no timing
assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchwire.bench.soak import OUTCOMES

pytestmark = pytest.mark.slow


def test_short_soak_passes_and_writes_json_and_plot(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "batchwire.bench.soak", "--short", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = json.loads((tmp_path / "soak.json").read_text())
    failed = {name: c for name, c in report["checks"].items() if c["ok"] is False}
    assert result.returncode == 0 and not failed, (failed, result.stdout + result.stderr)
    assert report["passed"] is True

    requests = report["requests"]
    assert set(requests["by_outcome"]) == set(OUTCOMES)
    assert requests["sent"] == requests["answered"] == sum(requests["by_outcome"].values())
    assert requests["lost"] == requests["by_outcome"]["LOST"] == 0
    assert requests["by_outcome"]["OTHER"] == 0 and requests["extra_answers"] == 0
    # The load really was mixed: both call shapes, and every hostile kind was answered.
    assert requests["unary"] > 0 and requests["streamed"] > 0
    for outcome in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED"):
        assert requests["by_outcome"][outcome] > 0, outcome
    assert requests["short_deadlines"] > 0 and requests["streams_cancelled"] > 0
    assert report["reloads"]["count"] > 0 and report["reloads"]["errors"] == []
    assert all(p["got"] == p["expected"] for p in report["probes"])

    # Every example model served and counted on both sides.
    assert set(report["counters"]) == {"cnn", "mlp", "null", "text"}
    for model, row in report["counters"].items():
        assert row["statistics_success"] == row["metrics_success"], model
        assert row["client"]["OK"] > 0 and row["success_gap"] >= 0, model
    for name in (
        "one_outcome_each",
        "none_lost",
        "streams_end_ok",
        "statistics_match_metrics",
        "success_matches_client",
        "invalid_matches_client",
        "counted_within_sent",
    ):
        assert report["checks"][name]["ok"] is True, name

    # Resource bounds are reported with both ends; /proc is read on Linux only, the
    # server's asyncio task gauge everywhere.
    linux = sys.platform == "linux"
    for name, key, measured in (
        ("rss", "rss_bytes", linux),
        ("fds", "fds", linux),
        ("threads", "threads", linux),
        ("asyncio_tasks", "asyncio_tasks", True),
    ):
        assert report["checks"][name]["ok"] is (True if measured else None), name
        if measured:
            assert report["resources"]["start"][key] > 0 and report["resources"]["end"][key] > 0
    assert report["samples"] and report["bounds"]["rss_factor"] == 1.25

    png = (tmp_path / "soak.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
