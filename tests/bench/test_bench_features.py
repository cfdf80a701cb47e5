"""The feature-cost benchmarks run end to end and write their figures (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_access_cost_writes_each_case_and_the_ratio_it_implies(tmp_path: Path) -> None:
    from batchwire.bench.access_cost import run

    result = run(2_000, 450.0, tmp_path)
    assert set(result["cases"]) == {"restricted", "token", "both"}
    for figures in result["cases"].values():
        assert figures["implied_ratio"] == round(1 / (1 + figures["added_us"] / 450.0), 4)
    assert json.loads((tmp_path / "access_cost.json").read_text()) == result
    assert (tmp_path / "access_cost.png").stat().st_size > 0


@pytest.mark.parametrize("feature", ["token-auth", "restricted"])
def test_feature_cost_drives_both_servers_through_the_feature(
    tmp_path: Path, perf_analyzer: str, feature: str
) -> None:
    """perf_analyzer's -H headers reach the server: a refused call would fail the run."""
    from batchwire.bench.feature_cost import FEATURES, run

    result = run(
        FEATURES[feature],
        rounds=1,
        interval_ms=500,
        out=tmp_path,
        perf_analyzer=perf_analyzer,
        scenarios=("c32_unary",),
    )
    (pair,) = (row["c32_unary"] for row in result["rounds"])
    assert pair["base"]["throughput"] > 0
    assert pair["new"]["throughput"] > 0
    assert result["new"]["origin"].startswith(f"{feature} on (")
    assert "c32_unary" in result["summary"]
    written = json.loads((tmp_path / f"feature_cost_{feature}.json").read_text())
    assert written["feature"] == feature
    assert (tmp_path / f"feature_cost_{feature}.png").stat().st_size > 0
    if feature == "token-auth":  # the "on" server really enforced an auth config
        assert "1 principal(s)" in (tmp_path / f"{feature}_on.log").read_text()
