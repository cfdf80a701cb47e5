"""The shared-memory benchmark's short mode, end to end against a real server: both sides of
every scenario answered requests, and the JSON and plot say so (no timing assertions)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from batchwire.bench.shared_memory import REDUCE_MODEL, SCENARIOS, SIDES

pytestmark = pytest.mark.slow

COMMAND = (sys.executable, "-m", "batchwire.bench.shared_memory")
FIGURES = {"throughput", "p50_ms", "p99_ms", "server_cpu_us"}


def test_short_run_measures_plain_and_shared_memory_on_every_scenario(
    tmp_path: Path, perf_analyzer: str
) -> None:
    done = subprocess.run(
        [*COMMAND, "--short", "--out", str(tmp_path), "--perf-analyzer", perf_analyzer],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((tmp_path / "shared_memory.json").read_text())
    assert (tmp_path / "shared_memory.png").stat().st_size > 0

    names = [case.name for case in SCENARIOS]
    assert list(result["scenarios"]) == names == list(result["summary"])
    assert {s["model"] for s in result["scenarios"].values()} == {"cnn", REDUCE_MODEL}
    assert result["scenarios"][f"{REDUCE_MODEL}_c1"]["input_bytes"] == 1 << 20
    assert result["serve_args"] == ["--allow-client-shm"]
    # Only the shared-memory option tells the two sides apart.
    assert result["sides"] == {side: list(args) for side, args in SIDES.items()}
    assert "system" in result["sides"]["shm"] and "system" not in result["sides"]["plain"]

    (row,) = result["rounds"]  # --short: one round
    for name in names:
        pair = row[name]
        assert sorted(pair["order"]) == ["plain", "shm"]
        for side in SIDES:
            assert set(pair[side]) >= FIGURES
            # perf_analyzer exits non-zero on a failed request: a rate means answers.
            assert pair[side]["throughput"] > 0, (name, side)
            assert pair[side]["p50_ms"] > 0 and pair[side]["p99_ms"] >= pair[side]["p50_ms"]
        summary = result["summary"][name]
        expected = pair["shm"]["throughput"] / pair["plain"]["throughput"]
        assert summary["ratio"] == pytest.approx(expected, abs=1e-4)
        assert summary["ratio_quartiles"] == [summary["ratio"]] * 3
        assert summary["shm_throughput"] == pair["shm"]["throughput"]
    # ABBA: consecutive scenarios start with opposite sides.
    orders = [row[name]["order"][0] for name in names]
    assert all(a != b for a, b in itertools.pairwise(orders))
    # The server ran with client shared memory on and shut down cleanly.
    log = (tmp_path / "shared_memory_server.log").read_text()
    assert "reduce_1mib' version 1 is ready" in log and "Traceback" not in log
