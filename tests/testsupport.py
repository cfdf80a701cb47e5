"""Small helpers shared by tests (importable as ``testsupport``): model repositories written
on the fly, servers on free loopback ports, span records, components that may be missing."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

# Re-exported: the one free_port, shared with the benchmarks and the load test.
from batchwire.serve_process import free_port as free_port

if TYPE_CHECKING:
    from batchwire.server.app import ServerThread
    from batchwire.telemetry.span_records import RequestSpanRecord

#: The repository's root folder (pyproject.toml, README.md, the package folders).
REPO_ROOT = Path(__file__).resolve().parents[1]


def write_python_model(root: Path, name: str, config: str, source: str, version: int = 1) -> Path:
    """Write ``<root>/<name>/config.pbtxt`` and ``<root>/<name>/<version>/model.py``."""
    folder = root / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(config))
    (folder / str(version) / "model.py").write_text(textwrap.dedent(source))
    return folder


ALL_DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "BF16", "FP32", "FP64", "BYTES",
)  # fmt: skip


def echo_model_config(name: str = "echo", max_batch_size: int = 8) -> str:
    """A python-platform model with one input and one output per v2 datatype."""
    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {max_batch_size}"]
    for kind in ("input", "output"):
        for dt in ALL_DATATYPES:
            config_type = "TYPE_STRING" if dt == "BYTES" else f"TYPE_{dt}"
            prefix, optional = ("IN", " optional: true") if kind == "input" else ("OUT", "")
            lines.append(
                f'{kind} {{ name: "{prefix}_{dt}" data_type: {config_type} dims: [ -1 ]{optional} }}'
            )
    return "\n".join(lines) + "\n"


ECHO_MODEL_SOURCE = '''
import numpy as np


class BatchwireModel:
    """Returns every IN_<type> input as OUT_<type>; absent inputs give empty outputs
    of the output's declared datatype (the server does not cast outputs)."""

    def load(self, spec, device, instance_index):
        from batchwire.core.datatypes import NUMPY_DTYPES

        self.outputs = {t.name: NUMPY_DTYPES[t.datatype] for t in spec.outputs}

    def execute(self, inputs):
        batch = len(next(iter(inputs.values())))
        echoed = {"OUT_" + name[3:]: value for name, value in inputs.items()}
        return {
            name: echoed.get(name, np.zeros((batch, 0), dtype))
            for name, dtype in self.outputs.items()
        }
'''

FAILING_MODEL_CONFIG = """
name: "failing"
backend: "python"
max_batch_size: 8
input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }
"""

FAILING_MODEL_SOURCE = '''
class BatchwireModel:
    """Doubles X, but raises when any element is negative (a poisoned request)."""

    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        x = inputs["X"]
        if bool((x < 0).any()):
            raise ValueError("negative input is not allowed")
        return {"Y": x * 2}
'''


def start_server(repository: Path | None, **settings: object) -> ServerThread:
    """Start a server on 127.0.0.1 with a free port; the caller stops it."""
    from batchwire.server.app import ServerThread
    from batchwire.server.settings import ServerSettings

    config = ServerSettings(host="127.0.0.1", port=0, model_repository=repository, **settings)
    return ServerThread(config).start()


def request_span_record(**changes: object) -> RequestSpanRecord:
    """A traced request's span record with plausible fields, ``changes`` applied."""
    from batchwire.telemetry.span_records import RequestSpanRecord

    record = RequestSpanRecord(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        parent_span_id=0x00F067AA0BA902B7,
        parent_remote=True,
        method="ModelInfer",
        model="mlp",
        version="1",
        request_id="r-1",
        batch_size=4,
        start_ns=100,
        end_ns=900,
        received_ns=150,
        queued_ns=300,
        input_end_ns=350,
        infer_end_ns=600,
        output_end_ns=650,
        send_ns=700,
        grpc_status=0,
        error_type="",
        error_message="",
        tensors=(),
    )
    return record._replace(**changes)


def require_component(available: bool, reason: str) -> None:
    """Skip a test whose component is missing, but fail under CI (``CI=true``).

    ``scripts/test.sh`` installs every such component itself (helper venvs, perf_analyzer,
    system packages), so in CI a missing one is a broken install, not a reason to skip.
    """
    import os

    import pytest

    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (scripts/test.sh installs it; CI does not skip)")
    pytest.skip(reason)


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    For changes that happen in the background (a repository poll, a reload): the test
    waits for the state it expects, never for a fixed time.
    """
    import time

    import pytest

    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting for {what} after {timeout:g} s")
        time.sleep(0.02)


def metric_samples(metrics_url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of metric ``name`` on a server's /metrics: :func:`labels` key -> value."""
    import re
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            pairs, value = line[len(name) + 1 :].rsplit("} ", 1)
            found[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', pairs)))] = float(value)
    return found


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    """A sample's labels as :func:`metric_samples` keys them (sorted name, value pairs)."""
    return tuple(sorted(pairs.items()))
