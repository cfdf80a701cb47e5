"""The soak's short mode, run as ``batchwire soak --short``, end to end: every request gets
one outcome, nothing is lost, every fault variant of the soak's faulty model got its
status, the server's log has no ERROR record, the server's counters agree with the
client's, resource bounds are reported (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchwire.bench.soak import FAULTS, FAULTY_MODEL, OUTCOMES

pytestmark = pytest.mark.slow


def _batchwire() -> list[str]:
    """The ``batchwire`` console script next to this interpreter, else ``python -m batchwire``."""
    script = Path(sys.executable).with_name("batchwire")
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchwire"]


def test_short_soak_passes_and_writes_json_and_plot(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_batchwire(), "soak", "--short", "--out", str(tmp_path)],
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
    assert all(p["got"] == p["expected"] and p["message_ok"] for p in report["probes"])

    # Faults: every variant probed and injected under load, each answered with its status.
    fault_probes = {p["probe"]: p for p in report["probes"] if p["kind"] == "fault"}
    assert set(fault_probes) == {f"{FAULTY_MODEL}/{v}" for v in FAULTS}
    assert "injected fault 'raise'" in fault_probes[f"{FAULTY_MODEL}/raise"]["message"]
    assert (
        "has shape [1, 5], expected [1, 4]"
        in (fault_probes[f"{FAULTY_MODEL}/wrong_shape"]["message"])
    )
    assert set(requests["faults_by_variant"]) == set(FAULTS)
    assert all(n > 0 for n in requests["faults_by_variant"].values())
    assert requests["faults_injected"] == sum(requests["faults_by_variant"].values()) + len(FAULTS)
    faults = requests["by_kind"]["fault"]
    assert faults["INTERNAL"] > 0 and faults["DEADLINE_EXCEEDED"] > 0
    assert set(faults) <= {"INTERNAL", "DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED"}
    # Healthy requests to the faulty model, batched with faulty ones, were answered OK.
    assert requests["by_kind"]["ok"].keys() <= {"OK", "UNAVAILABLE", "CANCELLED", "LOST"}
    assert report["server_log"]["records"] == 0

    # Every example model and the faulty one served and counted on both sides.
    assert set(report["counters"]) == {"cnn", "mlp", "null", "text", FAULTY_MODEL}
    for model, row in report["counters"].items():
        assert row["statistics_success"] == row["metrics_success"], model
        assert row["client"]["OK"] > 0 and row["success_gap"] >= 0, model
        assert row["internal_gap"] >= 0, model
        if model != FAULTY_MODEL:
            assert row["client"]["INTERNAL"] == 0, model
    assert report["counters"][FAULTY_MODEL]["client"]["INTERNAL"] == faults["INTERNAL"]
    for name in (
        "one_outcome_each",
        "none_lost",
        "streams_end_ok",
        "server_log_clean",
        "statistics_match_metrics",
        "success_matches_client",
        "invalid_matches_client",
        "internal_matches_client",
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
