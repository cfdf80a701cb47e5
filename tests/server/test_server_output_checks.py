"""Models whose outputs contradict their config.pbtxt, served for real: each mismatch is
INTERNAL naming the output, the declared and the returned shape or datatype (or, when a
``model_warmup`` shows it, a failed load), and the other models keep answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from testsupport import start_server, write_python_model

from batchwire.server.app import ServerThread


def config(name: str, *, max_batch_size: int = 8, dims: str = "[ 3 ]", extra: str = "") -> str:
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input {{ name: "X" data_type: TYPE_FP32 dims: {dims} }}
output {{ name: "OUT" data_type: TYPE_FP32 dims: {dims} }}
{extra}
"""


def source(body: str) -> str:
    return f"""
import numpy as np
import torch


class BatchwireModel:
    def execute(self, inputs):
        x = inputs["X"]
        {body}
"""


#: model name -> (what its execute() returns, the error fragment a client must see).
FAULTY = {
    "wide": (
        'return {"OUT": torch.cat([x, x[:, :1]], dim=1)}',
        "model 'wide' version '1': output 'OUT' has shape [2, 4], expected [2, 3] "
        "(config dims [3] and batch size 2)",
    ),
    "short_batch": (
        'return {"OUT": x[:1]}',
        "model 'short_batch' version '1': output 'OUT' has shape [1, 3], expected [2, 3] "
        "(config dims [3] and batch size 2)",
    ),
    "float64": (
        'return {"OUT": x.double()}',
        "model 'float64' version '1': output 'OUT' has datatype FP64 (torch.float64), "
        "expected FP32 (config data_type TYPE_FP32; a torch.float32 tensor or numpy float32 "
        "array); outputs are not cast",
    ),
    "numpy_float64": (
        'return {"OUT": x.numpy().astype(np.float64)}',
        "output 'OUT' has datatype FP64 (numpy float64), expected FP32",
    ),
    "missing": (
        'return {"OTHER": x}',
        "execute() returned no output(s) OUT (got OTHER)",
    ),
    "raising": (
        'raise RuntimeError("the weights are on fire")',
        "the weights are on fire",
    ),
}

WARMUP = """
model_warmup [ { name: "probe" batch_size: 1
  inputs { key: "X" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } } ]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("output-checks")
    for name, (body, _) in FAULTY.items():
        write_python_model(root, name, config(name), source(body))
    write_python_model(
        root,
        "good",
        config("good").replace(
            'output { name: "OUT"',
            'output { name: "NEG" data_type: TYPE_FP32 dims: [ 3 ] }\noutput { name: "OUT"',
        ),
        source('return {"OUT": x * 2, "NEG": -x}'),
    )
    write_python_model(
        root,
        "unbatched",
        config("unbatched", max_batch_size=0, dims="[ 2, 3 ]"),
        source('return {"OUT": x.T.contiguous()}'),
    )
    write_python_model(
        root,
        "warm",
        config("warm", extra=WARMUP),
        source('return {"OUT": torch.cat([x, x], dim=1)}'),
    )
    srv = start_server(root, model_control_mode="explicit", load_models=("*",))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.address)
    yield client
    client.close()


def infer(
    client: triton.InferenceServerClient,
    model: str,
    x: np.ndarray,
    outputs: tuple[str, ...] = (),
) -> triton.InferResult:
    tensor = triton.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    requested = [triton.InferRequestedOutput(name) for name in outputs] or None
    return client.infer(model, [tensor], outputs=requested)


X = np.arange(6, dtype=np.float32).reshape(2, 3)


def assert_good_answers(client: triton.InferenceServerClient) -> None:
    result = infer(client, "good", X)
    np.testing.assert_array_equal(result.as_numpy("OUT"), X * 2)
    np.testing.assert_array_equal(result.as_numpy("NEG"), -X)


@pytest.mark.parametrize("model", sorted(FAULTY))
def test_faulty_output_is_internal_naming_expected_and_got(client, model: str) -> None:
    with pytest.raises(triton.InferenceServerException) as caught:
        infer(client, model, X)
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert FAULTY[model][1] in caught.value.message()
    assert client.is_model_ready(model)  # a faulty batch fails; the model stays loaded
    assert_good_answers(client)


def test_metadata_advertises_the_config_shape_the_check_enforces(client) -> None:
    metadata = client.get_model_metadata("wide")
    assert [(o.name, list(o.shape), o.datatype) for o in metadata.outputs] == [
        ("OUT", [-1, 3], "FP32")
    ]


def test_model_without_batching_is_checked_against_its_dims(client) -> None:
    with pytest.raises(triton.InferenceServerException) as caught:
        infer(client, "unbatched", X)
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert (
        "model 'unbatched' version '1': output 'OUT' has shape [3, 2], expected [2, 3] "
        "(config dims [2, 3])" in caught.value.message()
    )


def test_requested_output_subsets_still_work(client) -> None:
    result = infer(client, "good", X, outputs=("NEG",))
    np.testing.assert_array_equal(result.as_numpy("NEG"), -X)
    assert result.as_numpy("OUT") is None


def test_mismatch_seen_at_warmup_fails_the_load_with_the_reason(client) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index["warm"].state == "UNAVAILABLE"
    reason = index["warm"].reason
    assert "warmup 'probe' failed" in reason
    assert (
        "output 'OUT' has shape [1, 6], expected [1, 3] (config dims [3] and batch size 1)"
        in reason
    )
    assert not client.is_model_ready("warm")
    assert index["good"].state == "READY"
    assert_good_answers(client)
