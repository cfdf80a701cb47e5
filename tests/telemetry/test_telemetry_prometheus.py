"""A real Prometheus server scrapes /metrics and answers PromQL with the server's counts."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from testsupport import free_port, require_component, start_server

from batchwire.clients import InferenceClient

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
)


@pytest.fixture(autouse=True)
def _needs_prometheus() -> None:
    require_component(
        PROMETHEUS is not None,
        "the prometheus binary is not installed (scripts/install-system-deps.sh installs it)",
    )


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _wait(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:  # not listening yet
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout} s (last: {last!r})")


def test_prometheus_scrapes_the_request_count(examples_repository, tmp_path: Path) -> None:
    metrics_port = free_port()
    server = start_server(examples_repository, metrics_port=metrics_port)
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: batchwire\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [
            str(PROMETHEUS),  # the test skips without one
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{web}/api/v1"
    try:

        def target_up() -> bool:
            targets = _get(f"{api}/targets")["data"]["activeTargets"]
            return any(t["health"] == "up" for t in targets)

        _wait("the scrape target is up", target_up, timeout=30)
        n = 17
        with InferenceClient(server.address) as client:
            for _ in range(n):
                client.infer("mlp", {"INPUT__0": np.ones((1, 64), np.float32)})
        query = urllib.parse.quote('nv_inference_request_success{model="mlp"}')

        def scraped_count() -> float | None:
            result = _get(f"{api}/query?query={query}")["data"]["result"]
            return (
                float(result[0]["value"][1])
                if result and float(result[0]["value"][1]) == n
                else None
            )

        assert _wait(f"Prometheus sees {n} successes", scraped_count, timeout=15) == n
        quantile = urllib.parse.quote(
            "histogram_quantile(0.5, sum by (le) (batchwire_request_duration_seconds_bucket"
            '{model="mlp"}))'
        )
        result = _get(f"{api}/query?query={quantile}")["data"]["result"]
        assert result and 0 < float(result[0]["value"][1]) < 2.5
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(timeout=10)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
        log.close()
        server.stop()
