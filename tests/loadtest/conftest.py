"""Fixtures for the load-test tests: the example models served by ``python -m batchwire serve``."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from loadtest_helpers import ServedExamples
from testsupport import free_port


@pytest.fixture(scope="session")
def served_examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedExamples]:
    """``python -m batchwire serve`` on the example models, in a subprocess."""
    from batchwire.loadtest.runner import LoadTestError, wait_until_ready

    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("loadtest-server") / "server.log"
    command = [
        sys.executable, "-m", "batchwire", "serve", "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        wait_until_ready(target, 120, process)
    except LoadTestError as exc:
        process.kill()
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
    yield ServedExamples(target, f"http://127.0.0.1:{metrics_port}/metrics")
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
