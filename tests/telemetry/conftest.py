"""Fixtures for the observability tests: a server with tracing, metrics and test models."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from testsupport import (
    FAILING_MODEL_CONFIG,
    FAILING_MODEL_SOURCE,
    free_port,
    write_python_model,
)

if TYPE_CHECKING:
    from batchwire.server.app import ServerThread

#: One request at a time, 0.3 s each, at most one waiting: the rest are rejected.
SLOW_MODEL_CONFIG = """
name: "slow"
backend: "python"
max_batch_size: 1
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""

SLOW_MODEL_SOURCE = """
import time


class BatchwireModel:
    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        time.sleep(0.3)
        return {"Y": inputs["X"]}
"""


@pytest.fixture(scope="session")
def telemetry_repository(
    examples_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """mlp and text (copied from the examples), ``mlp_window`` (the mlp with a fixed
    200 ms batch window, so concurrent requests share batches), plus the python models
    ``failing`` and ``slow``."""
    root = tmp_path_factory.mktemp("telemetry-repo")
    for name in ("mlp", "text"):
        shutil.copytree(examples_repository / name, root / name)
    shutil.copytree(examples_repository / "mlp", root / "mlp_window")
    config = root / "mlp_window" / "config.pbtxt"
    text = config.read_text().replace('name: "mlp"', 'name: "mlp_window"')
    text = text.replace(
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        "dynamic_batching { max_queue_delay_microseconds: 200000 }\n"
        'parameters { key: "batchwire.adaptive_delay" value: { string_value: "false" } }',
    )
    assert "200000" in text, text
    config.write_text(text)
    write_python_model(root, "failing", FAILING_MODEL_CONFIG, FAILING_MODEL_SOURCE)
    write_python_model(root, "slow", SLOW_MODEL_CONFIG, SLOW_MODEL_SOURCE)
    return root


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="session")
def telemetry_server(
    telemetry_repository: Path, span_exporter: InMemorySpanExporter
) -> Iterator[ServerThread]:
    """Tracing on for every request (spans in ``span_exporter``), /metrics on a free port.

    Shared by the telemetry tests: they compare counters before and after, and
    restore any trace setting they change.
    """
    from batchwire.server.app import ServerThread
    from batchwire.server.settings import ServerSettings

    settings = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=telemetry_repository,
        metrics_port=free_port(),
        trace_mode="always",
    )
    server = ServerThread(settings, span_exporter=span_exporter).start()
    yield server
    server.stop()


@pytest.fixture()
def spans(telemetry_server: ServerThread, span_exporter: InMemorySpanExporter):
    """A function returning every span exported so far (flushes first)."""

    def collect():
        assert telemetry_server.server.telemetry is not None
        telemetry_server.server.telemetry.tracing.flush()
        return list(span_exporter.get_finished_spans())

    return collect
