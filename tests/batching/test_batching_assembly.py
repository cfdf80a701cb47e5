"""Assembler: stacking, zero-copy pass-through, ragged padding and output slicing,
reshape, output validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchwire.batching.assembly import Assembler, OutputError
from batchwire.core.spec import BatchingSpec, ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest


def spec(inputs, outputs, max_batch_size=8, batching=None) -> ModelSpec:
    return ModelSpec(
        name="m",
        version="1",
        platform="pytorch_libtorch",
        max_batch_size=max_batch_size,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        batching=batching if batching is not None else (BatchingSpec() if max_batch_size else None),
    )


def request(**arrays) -> InferenceRequest:
    return InferenceRequest(inputs=dict(arrays))


FIXED = spec([TensorSpec("x", "FP32", (3,))], [TensorSpec("y", "FP32", (3,))])


def test_single_request_passes_arrays_through_without_copy():
    a = Assembler(FIXED)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    batch = a.assemble([request(x=x)], [2])
    assert batch.host["x"] is x
    assert batch.total == 2 and batch.padded_size == 2


def test_several_requests_concatenate_into_one_contiguous_array():
    a = Assembler(FIXED)
    xs = [np.full((n, 3), n, dtype=np.float32) for n in (1, 2, 3)]
    batch = a.assemble([request(x=x) for x in xs], [1, 2, 3])
    host = batch.host["x"]
    assert host.shape == (6, 3) and host.flags.c_contiguous
    assert host[:, 0].tolist() == [1, 2, 2, 3, 3, 3]


def test_split_gives_views_in_requested_order():
    s = spec(
        [TensorSpec("x", "FP32", (3,))],
        [TensorSpec("a", "FP32", (3,)), TensorSpec("b", "INT32", (1,))],
    )
    a = Assembler(s)
    reqs = [request(x=np.ones((1, 3), np.float32)), request(x=np.ones((2, 3), np.float32))]
    reqs[1].requested_outputs = ("b", "a")
    batch = a.assemble(reqs, [1, 2])
    out = {
        "a": torch.arange(9, dtype=torch.float32).reshape(3, 3),
        "b": torch.tensor([[1], [2], [3]], dtype=torch.int32),
    }
    first, second = a.split(out, batch, reqs)
    assert list(first) == ["a", "b"] and list(second) == ["b", "a"]
    assert first["a"].tolist() == [[0, 1, 2]]
    assert second["b"].dtype == np.int32 and second["b"].tolist() == [[2], [3]]
    assert first["a"].base is not None and first["a"].base is second["a"].base  # views


def test_shape_key_groups_by_non_batch_dims_and_ignores_ragged_axes():
    s = spec(
        [TensorSpec("x", "FP32", (-1,)), TensorSpec("r", "FP32", (-1, 2), allow_ragged_batch=True)],
        [TensorSpec("y", "FP32", (-1,))],
    )
    a = Assembler(s)
    assert not a.fixed_key
    k1 = a.shape_key({"x": np.zeros((1, 3)), "r": np.zeros((1, 5, 2))})
    k2 = a.shape_key({"x": np.zeros((4, 3)), "r": np.zeros((1, 9, 2))})
    k3 = a.shape_key({"x": np.zeros((1, 4)), "r": np.zeros((1, 5, 2))})
    assert k1 == k2 and k1 != k3
    assert Assembler(FIXED).fixed_key


def test_ragged_inputs_are_padded_and_outputs_sliced_back():
    s = spec(
        [TensorSpec("x", "FP32", (-1,), allow_ragged_batch=True)],
        [TensorSpec("y", "FP32", (-1,)), TensorSpec("pooled", "FP32", (1,))],
        batching=BatchingSpec(ragged_pad_value=-1.0),
    )
    a = Assembler(s)
    reqs = [request(x=np.full((1, n), n, np.float32)) for n in (2, 4, 3)]
    batch = a.assemble(reqs, [1, 1, 1])
    host = batch.host["x"]
    assert host.tolist() == [[2, 2, -1, -1], [4, 4, 4, 4], [3, 3, 3, -1]]
    assert batch.padded_size == 4  # ceil(3 items * 12 padded / 9 real elements)
    y = torch.from_numpy(host * 10)
    pooled = torch.ones(3, 1)
    outs = a.split({"y": y, "pooled": pooled}, batch, reqs)
    assert [o["y"].tolist() for o in outs] == [[[20, 20]], [[40, 40, 40, 40]], [[30, 30, 30]]]
    assert [o["pooled"].shape for o in outs] == [(1, 1)] * 3  # fixed dims: untouched


def test_ragged_equal_lengths_need_no_padding():
    s = spec(
        [TensorSpec("x", "INT64", (-1,), allow_ragged_batch=True)],
        [TensorSpec("y", "INT64", (-1,))],
    )
    a = Assembler(s)
    reqs = [request(x=np.ones((1, 3), np.int64)), request(x=np.ones((2, 3), np.int64))]
    batch = a.assemble(reqs, [1, 2])
    assert batch.host["x"].shape == (3, 3) and batch.pads == [] and batch.padded_size == 3


def test_reshape_is_left_to_the_runner():
    s = spec(
        [TensorSpec("x", "FP32", (4,), reshape=(2, 2))],
        [TensorSpec("y", "FP32", (4,), reshape=(2, 2))],
    )
    a = Assembler(s)
    reqs = [request(x=np.ones((1, 4), np.float32)), request(x=np.ones((2, 4), np.float32))]
    batch = a.assemble(reqs, [1, 2])
    assert batch.host["x"].shape == (3, 4)  # the config's dims, batch first
    outs = a.split({"y": torch.zeros(3, 4)}, batch, reqs)
    assert outs[1]["y"].shape == (2, 4)


def test_non_batching_model_sees_shapes_as_given():
    s = spec([TensorSpec("x", "FP32", (3,))], [TensorSpec("y", "FP32", (3,))], max_batch_size=0)
    a = Assembler(s)
    x = np.ones(3, np.float32)
    batch = a.assemble([request(x=x)], [1])
    assert batch.host["x"] is x
    (out,) = a.split({"y": torch.ones(3)}, batch, [request(x=x)])
    assert out["y"].shape == (3,)


def test_bytes_inputs_concatenate_as_object_arrays():
    s = spec([TensorSpec("s", "BYTES", (1,))], [TensorSpec("n", "INT32", (1,))])
    a = Assembler(s)
    reqs = [
        request(s=np.array([[b"ab"]], dtype=object)),
        request(s=np.array([[b"c"]], dtype=object)),
    ]
    batch = a.assemble(reqs, [1, 1])
    assert batch.host["s"].dtype == object and batch.host["s"].tolist() == [[b"ab"], [b"c"]]


def test_missing_output_is_an_error_naming_it():
    s = spec(
        [TensorSpec("x", "FP32", (3,))],
        [TensorSpec("y", "FP32", (3,)), TensorSpec("z", "FP32", (3,))],
    )
    a = Assembler(s)
    reqs = [request(x=np.ones((1, 3), np.float32))]
    batch = a.assemble(reqs, [1])
    with pytest.raises(OutputError, match=r"did not return output 'z' \(expected y, z; got y\)"):
        a.split({"y": torch.ones(1, 3)}, batch, reqs)


def test_wrong_batch_dimension_is_an_error_with_expected_and_got():
    a = Assembler(FIXED)
    reqs = [request(x=np.ones((2, 3), np.float32)), request(x=np.ones((2, 3), np.float32))]
    batch = a.assemble(reqs, [2, 2])
    with pytest.raises(
        OutputError,
        match=r"output 'y' has shape \[3, 3\], expected \[4, 3\] \(config dims \[3\] and batch size 4\)",
    ):
        a.split({"y": torch.ones(3, 3)}, batch, reqs)
    with pytest.raises(
        OutputError, match=r"output 'y' has shape \[\] \(a scalar\), expected \[4, 3\]"
    ):
        a.split({"y": torch.tensor(1.0)}, batch, reqs)
    with pytest.raises(OutputError, match="expected a dict"):
        a.split(torch.ones(4, 3), batch, reqs)


def test_staging_allocator_receives_every_numeric_input():
    staged = {}

    def alloc(name, shape, dtype):
        staged[name] = np.empty(shape, dtype)
        return staged[name]

    a = Assembler(FIXED)
    x = np.ones((2, 3), np.float32)
    single = a.assemble([request(x=x)], [2], alloc)
    assert single.host["x"] is staged["x"] and single.host["x"].tolist() == x.tolist()
    several = a.assemble([request(x=x), request(x=x * 2)], [2, 2], alloc)
    assert several.host["x"] is staged["x"] and several.host["x"][:, 0].tolist() == [1, 1, 2, 2]


def test_bf16_travels_as_uint16_storage():
    s = spec([TensorSpec("x", "BF16", (2,))], [TensorSpec("y", "BF16", (2,))])
    a = Assembler(s)
    bits = torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16).view(torch.uint16).numpy()
    reqs = [request(x=bits), request(x=bits)]
    batch = a.assemble(reqs, [1, 1])
    (out, _) = a.split({"y": torch.tensor([[1.5, -2.0]] * 2, dtype=torch.bfloat16)}, batch, reqs)
    assert out["y"].dtype == np.uint16 and out["y"].tolist() == bits.tolist()
