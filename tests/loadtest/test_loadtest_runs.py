"""``batchwire loadtest`` end to end: short bounded Locust runs against a local server."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from loadtest_helpers import (
    GENEROUS_SLO,
    CommandResult,
    run_loadtest,
    write_slo,
)
from testsupport import require_component

from batchwire.serve_process import ServerProcess

# find_spec, not importorskip: importing locust monkey-patches this whole test process
# with gevent, which breaks every gRPC server the other tests start.
if importlib.util.find_spec("locust") is None:
    pytest.skip(
        "Locust is not installed (pip install 'batchwire[loadtest]')", allow_module_level=True
    )
pytest.importorskip(
    "matplotlib", reason="matplotlib is not installed (pip install 'batchwire[loadtest]')"
)

pytestmark = pytest.mark.slow

#: A port nothing listens on, for an unreachable metrics URL.
DEAD_METRICS = "http://127.0.0.1:9/metrics"


@pytest.fixture(scope="module")
def passing_run(tmp_path_factory: pytest.TempPathFactory) -> CommandResult:
    """A short run in which the command starts its own server; generous targets."""
    folder = tmp_path_factory.mktemp("passing")
    slo = write_slo(folder, GENEROUS_SLO)
    return run_loadtest(
        folder / "out",
        "--slo", str(slo),
        "--users", "2",
        "--spawn-rate", "2",
        "--duration", "4s",
        "--metrics-url", DEAD_METRICS,
    )  # fmt: skip


def test_generous_targets_pass(passing_run: CommandResult) -> None:
    assert passing_run.returncode == 0, passing_run.output
    lines = passing_run.stdout.splitlines()
    for model in ("mlp", "text"):
        for metric in ("p50", "p99", "rps", "failure ratio"):
            assert any(line.startswith(f"PASS {model} {metric} ") for line in lines), lines
    assert "all 8 target(s) met" in passing_run.stdout
    assert "starting server" in passing_run.stderr  # no --host: the command started one
    out = passing_run.out
    results = json.loads((out / "slo_results.json").read_text())
    assert results["passed"] and len(results["checks"]) == 8
    for name in ("report.html", "throughput.png", "latency_over_time.png", "latency_vs_load.png",
                 "failures_by_status.png", "locust_stats.csv", "locust_stats_history.csv",
                 "latency.json", "server.log"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # Our sub-millisecond histograms count the same requests as Locust's CSV.
    assert _locust_counts(out) == _latency_counts(out)
    html = (out / "report.html").read_text()
    assert 'id="verdict">PASS<' in html
    assert "server metrics not available" in html and DEAD_METRICS in html


def test_an_impossible_target_fails_and_is_named(
    examples_process: ServerProcess, tmp_path: Path
) -> None:
    slo = write_slo(
        tmp_path,
        """
        version = 1
        [models.mlp]
        p99_ms = 0.001
        [models.text]
        p99_ms = 5000
        """,
    )
    result = run_loadtest(
        tmp_path / "out",
        "--host", examples_process.address,
        "--slo", str(slo),
        "--users", "2",
        "--duration", "3s",
        "--warmup", "0s",
    )  # fmt: skip
    assert result.returncode == 1, result.output
    assert re.search(r"^FAIL mlp p99 [\d.]+ ms > target 0\.001 ms$", result.stdout, re.M), (
        result.stdout
    )
    assert re.search(r"^PASS text p99 [\d.]+ ms <= target 5000 ms$", result.stdout, re.M), (
        result.stdout
    )
    assert "FAIL: 1 of 2 target(s) missed" in result.stdout
    assert "starting server" not in result.stderr
    assert 'id="verdict">FAIL<' in (result.out / "report.html").read_text()


def test_a_malformed_slo_file_stops_before_any_load(tmp_path: Path) -> None:
    slo = write_slo(tmp_path, "version = 1\n[models.mlp]\np99_ms = -3\n")
    out = tmp_path / "out"
    result = run_loadtest(out, "--slo", str(slo), "--duration", "3s")
    assert result.returncode == 2, result.output
    assert f"{slo}: models.mlp.p99_ms must be a positive number, got -3" in result.stderr
    # Nothing was started: no output folder, no server or Locust logs, and no time spent.
    assert not out.exists()
    assert result.seconds < 15
    assert "starting server" not in result.stderr and "running locust" not in result.stderr


def test_a_remote_host_is_refused(tmp_path: Path) -> None:
    result = run_loadtest(tmp_path / "out", "--host", "192.0.2.10:8001", "--duration", "3s")
    assert result.returncode == 2
    assert "refusing to send load to '192.0.2.10'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_distributed_run_with_two_workers_streaming(
    examples_process: ServerProcess, tmp_path: Path
) -> None:
    slo = write_slo(tmp_path, GENEROUS_SLO)
    result = run_loadtest(
        tmp_path / "out",
        "--host", examples_process.address,
        "--metrics-url", str(examples_process.metrics_url),
        "--slo", str(slo),
        "--users", "4",
        "--spawn-rate", "4",
        "--duration", "4s",
        "--workers", "2",
        "--mode", "stream",
    )  # fmt: skip
    assert result.returncode == 0, result.output + result.logs
    out = result.out
    assert "--master" in result.stderr and "--expect-workers 2" in result.stderr
    for index in (1, 2):
        log = (out / f"locust-worker-{index}.log").read_text()
        assert "Got quit message from master" in log, log
    counts = _latency_counts(out)
    assert counts["mlp"] > 0 and counts["text"] > 0
    assert counts == _locust_counts(out)  # both workers' histograms reached the master
    # The server's own view, scraped from its Prometheus endpoint during the run.
    html = (out / "report.html").read_text()
    assert "server metrics not available" not in html and "count / exec" in html
    assert (out / "server_metrics.png").stat().st_size > 0
    with (out / "locust_stats.csv").open() as handle:
        assert {row["Type"] for row in csv.DictReader(handle) if row["Name"] != "Aggregated"} == {
            "grpc-stream"
        }


def test_the_report_renders_in_headless_chromium(
    passing_run: CommandResult, tmp_path: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    require_component(
        browser is not None,
        "chromium is not installed (scripts/install-system-deps.sh installs it)",
    )
    report = passing_run.out / "report.html"
    assert report.is_file(), passing_run.output
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", "--window-size=1280,2000",
    ]  # fmt: skip
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    sources = re.findall(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(sources) >= 4 and all(len(src) > 1000 for src in sources), dom[:2000]
    assert "PASS" in dom and "Latency targets" in dom

    screenshot = tmp_path / "report.png"
    flags[-2] = f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"
    subprocess.run(
        [browser, *flags, f"--screenshot={screenshot}", report.as_uri()],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert screenshot.is_file(), "chromium wrote no screenshot"
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[0] == 2000 and pixels.shape[1] == 1280
    # Not blank: plots and tables give many distinct colours and real contrast.
    assert pixels[..., :3].std() > 0.05
    assert len({tuple(p) for p in (pixels[::20, ::20, :3] * 255).astype(int).reshape(-1, 3)}) > 20


def _latency_counts(out: Path) -> dict[str, int]:
    data = json.loads((out / "latency.json").read_text())
    counts: dict[str, int] = {}
    for row in data["seconds"]:
        total = sum(row["latency_us"].values()) + sum(row["failures"].values())
        counts[row["name"]] = counts.get(row["name"], 0) + total
    return counts


def _locust_counts(out: Path) -> dict[str, int]:
    with (out / "locust_stats.csv").open() as handle:
        return {
            row["Name"]: int(row["Request Count"])
            for row in csv.DictReader(handle)
            if row["Name"] != "Aggregated"
        }
