"""core.validation: a request is checked against its model's spec, and every refusal names
the tensor, what was expected and what arrived."""

from __future__ import annotations

import numpy as np
import pytest

from batchwire.core.errors import InvalidInputError
from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest
from batchwire.core.validation import expected_shape, validate_request

X = TensorSpec("X", "FP32", (2, -1))
IDS = TensorSpec("IDS", "INT64", (3,), optional=True)
RAW = TensorSpec("RAW", "BF16", (2,), optional=True)
BATCHED = ModelSpec(
    "m", "1", "pytorch_libtorch", 4, (X, IDS, RAW), (TensorSpec("Y", "FP32", (2,)),)
)
UNBATCHED = ModelSpec("flat", "1", "python", 0, (X,), (TensorSpec("Y", "FP32", (2,)),))


def check(
    spec: ModelSpec,
    inputs: dict[str, np.ndarray],
    datatypes: dict[str, str] | None = None,
    outputs: tuple[str, ...] = (),
) -> None:
    request = InferenceRequest(inputs=inputs, requested_outputs=outputs)
    validate_request(spec, request, datatypes or {})


def fp32(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def test_expected_shape_has_the_batch_dimension_when_the_model_batches() -> None:
    assert expected_shape(BATCHED, X) == (-1, 2, -1)
    assert expected_shape(UNBATCHED, X) == (2, -1)


def test_requests_that_fit_pass() -> None:
    check(BATCHED, {"X": fp32(3, 2, 7)})
    check(BATCHED, {"X": fp32(4, 2, 1), "IDS": np.zeros((4, 3), np.int64)}, outputs=("Y",))
    check(BATCHED, {"X": fp32(1, 2, 5), "RAW": np.zeros((1, 2), np.uint16)}, {"RAW": "BF16"})
    check(UNBATCHED, {"X": fp32(2, 9)})


@pytest.mark.parametrize(
    ("inputs", "datatypes", "outputs", "message"),
    [
        (
            {"X": fp32(1, 2, 1), "Z": fp32(1)},
            {},
            (),
            r"model 'm' has no input 'Z' \(expected inputs: X, IDS, RAW\)",
        ),
        ({}, {}, (), r"model 'm' input 'X' is missing \(expected FP32 \[-1,2,-1\]\)"),
        (
            {"X": fp32(1, 2, 1)},
            {"X": "FP64"},
            (),
            "model 'm' input 'X': expected datatype FP32, got FP64",
        ),
        (
            {"X": np.zeros((1, 2, 1), np.float64)},
            {},
            (),
            "model 'm' input 'X': expected FP32 data, got numpy float64",
        ),
        (
            {"X": fp32(1, 3, 1)},
            {},
            (),
            r"model 'm' input 'X': expected shape \[-1,2,-1\], got \[1,3,1\]",
        ),
        ({"X": fp32(2, 1)}, {}, (), r"expected shape \[-1,2,-1\], got \[2,1\]"),
        (
            {"X": fp32(2, 2, 1), "IDS": np.zeros((3, 3), np.int64)},
            {},
            (),
            "inputs disagree on the batch dimension: 'IDS' has 3, an earlier input has 2",
        ),
        ({"X": fp32(0, 2, 1)}, {}, (), "batch dimension must be >= 1, got 0"),
        ({"X": fp32(5, 2, 1)}, {}, (), "batch size 5 exceeds max_batch_size 4"),
        (
            {"X": fp32(1, 2, 1)},
            {},
            ("Y", "Z"),
            r"model 'm' has no output 'Z' \(expected outputs: Y\)",
        ),
    ],
    ids=[
        "unknown-input",
        "missing-input",
        "declared-datatype",
        "array-dtype",
        "dimension",
        "rank",
        "batch-disagreement",
        "empty-batch",
        "batch-too-large",
        "unknown-output",
    ],
)
def test_refusals_name_what_was_wrong(
    inputs: dict[str, np.ndarray], datatypes: dict[str, str], outputs: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        check(BATCHED, inputs, datatypes, outputs)


def test_bf16_and_uint16_share_storage_so_the_declared_datatype_decides() -> None:
    raw = np.zeros((1, 2), np.uint16)
    check(BATCHED, {"X": fp32(1, 2, 1), "RAW": raw})  # undeclared: the spec's BF16
    with pytest.raises(InvalidInputError, match="expected datatype BF16, got UINT16"):
        check(BATCHED, {"X": fp32(1, 2, 1), "RAW": raw}, {"RAW": "UINT16"})


def test_an_unbatched_model_takes_shapes_as_they_are() -> None:
    with pytest.raises(InvalidInputError, match=r"expected shape \[2,-1\], got \[1,2,3\]"):
        check(UNBATCHED, {"X": fp32(1, 2, 3)})
