"""Where batches run, through a real server: inline on the event loop or on the instance's
worker thread, and with how many torch intra-op threads (``batchwire.*`` parameters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testsupport import start_server, write_python_model

from batchwire.batching.placement import FIRST_PROBE
from batchwire.clients import InferenceClient

SOURCE = '''
import threading

import numpy as np
import torch


class BatchwireModel:
    """Answers, per request, the thread that ran its batch and its torch thread count."""

    def load(self, spec, device, instance_index):
        self.names = {}

    def execute(self, inputs):
        batch = len(inputs["X"])
        name = threading.current_thread().name.encode()
        threads = torch.get_num_threads()
        return {
            "THREAD": np.array([[name]] * batch, dtype=object),
            "TORCH_THREADS": np.full((batch, 1), threads, dtype=np.int32),
        }
'''


def config(name: str, parameters: dict[str, str]) -> str:
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 4",
        'input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }',
        'output { name: "THREAD" data_type: TYPE_STRING dims: [ 1 ] }',
        'output { name: "TORCH_THREADS" data_type: TYPE_INT32 dims: [ 1 ] }',
        "dynamic_batching { }",
    ]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("placement")
    # 1 s: a python model call is far below it, so probes always succeed.
    write_python_model(
        root, "inline", config("inline", {"batchwire.inline_below_us": "1000000"}), SOURCE
    )
    write_python_model(root, "default", config("default", {}), SOURCE)
    write_python_model(
        root, "threads", config("threads", {"batchwire.intra_op_threads": "3"}), SOURCE
    )
    server = start_server(root, metrics_port=0)
    yield server
    server.stop()


def run(server, model: str, count: int) -> list[tuple[str, int]]:
    with InferenceClient(server.address) as client:
        seen = []
        for _ in range(count):
            result = client.infer(model, {"X": np.zeros((1, 1), np.float32)})
            name = result.as_numpy("THREAD")[0, 0].decode()
            seen.append((name, int(result.as_numpy("TORCH_THREADS")[0, 0])))
    return seen


def test_short_batches_move_to_the_event_loop_after_the_first_probe(server) -> None:
    seen = run(server, "inline", FIRST_PROBE + 10)
    first = FIRST_PROBE - 1  # batches measured on the worker before the probe
    assert all(name.startswith("batchwire-inline-0") for name, _ in seen[:first])
    # From the probe on, every batch ran on the server's event-loop thread, one thread wide.
    assert {name for name, _ in seen[first:]} == {"batchwire-server"}
    assert {threads for _, threads in seen[first:]} == {1}


def test_python_models_stay_on_their_worker_thread_by_default(server) -> None:
    seen = run(server, "default", 3 * FIRST_PROBE)
    assert all(name.startswith("batchwire-default-0") for name, _ in seen)
    # Short batches run on one intra-op thread unless the config says otherwise.
    assert {threads for _, threads in seen} == {1}


def test_explicit_intra_op_threads_apply_to_every_batch(server) -> None:
    seen = run(server, "threads", 2 * FIRST_PROBE)
    assert {threads for _, threads in seen} == {3}


def test_the_servers_intra_op_threads_apply_to_models_without_their_own(tmp_path: Path) -> None:
    write_python_model(tmp_path, "default", config("default", {}), SOURCE)
    write_python_model(
        tmp_path, "threads", config("threads", {"batchwire.intra_op_threads": "3"}), SOURCE
    )
    server = start_server(tmp_path, metrics_port=0, intra_op_threads=2)
    try:
        assert {threads for _, threads in run(server, "default", 3)} == {2}
        assert {threads for _, threads in run(server, "threads", 3)} == {3}
    finally:
        server.stop()
