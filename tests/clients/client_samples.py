"""Sample tensors shared by the client tests."""

from __future__ import annotations

import numpy as np

from batchwire.clients import float_to_bf16
from batchwire.core.datatypes import NUMPY_DTYPES


def sample(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A deterministic array of ``datatype`` storage with interesting values."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items = [b"", b"a", "\u00e9t\u00e9".encode(), b"\x00\xff" * 3, b"x" * 300]
        flat = np.empty(count, dtype=object)
        flat[:] = [items[i % len(items)] for i in range(count)]
        return flat.reshape(shape)
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if datatype == "BF16":
        return float_to_bf16(rng.standard_normal(shape) * 100)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
