"""core.torch_tensors: zero-copy numpy <-> torch views and dtype casts at the model boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batchwire.core.datatypes import NUMPY_DTYPES
from batchwire.core.torch_tensors import TORCH_DTYPES, to_numpy, to_torch, v2_of_torch


def test_every_numeric_datatype_has_a_torch_dtype_of_the_same_size() -> None:
    assert set(TORCH_DTYPES) == set(NUMPY_DTYPES) - {"BYTES"}
    for name, dtype in TORCH_DTYPES.items():
        assert dtype.itemsize == NUMPY_DTYPES[name].itemsize, name
        assert v2_of_torch(dtype) == name
    with pytest.raises(ValueError, match=r"torch dtype torch\.complex64 has no KServe v2 datatype"):
        v2_of_torch(torch.complex64)


def test_to_torch_shares_memory_with_the_array() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_torch(array, "FP32")
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 3)
    array[0, 0] = 42.0
    assert tensor[0, 0].item() == 42.0


def test_bf16_storage_becomes_a_bfloat16_view() -> None:
    values = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    storage = values.view(torch.uint16).numpy()
    tensor = to_torch(storage, "BF16")
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16
    assert tensor.tolist() == [1.5, -2.0]


def test_bytes_stay_numpy_both_ways() -> None:
    array = np.array([b"a", b"bc"], dtype=np.object_)
    assert to_torch(array, "BYTES") is array
    assert to_numpy(array, "BYTES") is array


def test_to_numpy_casts_to_the_declared_datatype() -> None:
    out = to_numpy(torch.tensor([1.25, 2.5], dtype=torch.float64), "FP32")
    assert out.dtype == np.float32 and out.tolist() == [1.25, 2.5]
    same = torch.tensor([3, 4], dtype=torch.int32)
    assert to_numpy(same, "INT32").dtype == np.int32
    from_numpy = to_numpy(np.array([1, 2], dtype=np.int64), "INT32")
    assert from_numpy.dtype == np.int32 and from_numpy.tolist() == [1, 2]


def test_to_numpy_bf16_is_raw_uint16_storage() -> None:
    out = to_numpy(torch.tensor([1.5, -2.0], dtype=torch.float32), "BF16")
    assert out.dtype == np.uint16
    assert torch.from_numpy(out).view(torch.bfloat16).tolist() == [1.5, -2.0]
