"""The torch side of the v2 datatypes: dtypes and zero-copy array <-> tensor views.

Only the server imports this module (the client stays torch-free; see
:mod:`batchwire.core.datatypes`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from batchwire.core.datatypes import NUMPY_DTYPES

# Request tensors are zero-copy views of the received protobuf bytes, which are
# read-only. Models run under torch.inference_mode and must not write to their
# inputs; torch's warning about wrapping read-only memory is expected here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

#: v2 datatype name -> torch dtype (BYTES has none: only python-platform models take it).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}

_TORCH_TO_V2: dict[torch.dtype, str] = {dt: name for name, dt in TORCH_DTYPES.items()}


def v2_of_torch(dtype: torch.dtype) -> str:
    """The v2 datatype of a torch dtype."""
    try:
        return _TORCH_TO_V2[dtype]
    except KeyError:
        raise ValueError(f"torch dtype {dtype} has no KServe v2 datatype") from None


def to_torch(array: np.ndarray, datatype: str) -> torch.Tensor | np.ndarray:
    """Wrap a numpy array as a tensor without copying (BYTES stays numpy)."""
    if datatype == "BYTES":
        return array
    tensor = torch.from_numpy(array)
    if datatype == "BF16":
        return tensor.view(torch.bfloat16)
    return tensor


def to_numpy(value: torch.Tensor | np.ndarray, datatype: str) -> np.ndarray:
    """A CPU numpy view of a model output in the storage dtype of ``datatype``.

    Casts when the model produced another dtype than the config declares (for
    example float64 for an FP32 output), so the response always matches the spec.
    """
    if isinstance(value, np.ndarray):
        if datatype == "BYTES":
            return value
        wanted = NUMPY_DTYPES[datatype]
        return value if value.dtype == wanted else value.astype(wanted)
    tensor = value.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if datatype == "BF16":
        if tensor.dtype != torch.bfloat16:
            tensor = tensor.to(torch.bfloat16)
        return tensor.view(torch.uint16).numpy()
    wanted_torch = TORCH_DTYPES[datatype]
    if tensor.dtype != wanted_torch:
        tensor = tensor.to(wanted_torch)
    return tensor.numpy()
