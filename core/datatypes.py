"""KServe v2 datatypes and their numpy / Triton-config equivalents.

Arrays carry raw storage: BF16 travels as ``np.uint16`` (numpy has no
bfloat16) and is reinterpreted as ``torch.bfloat16`` only at the model
boundary (:mod:`batchwire.core.torch_tensors`); BYTES travels as a
1-D-or-more ``np.object_`` array of ``bytes``. The model spec, not the array,
says which v2 datatype a tensor is.

This module imports numpy only: the client and its command line use it, and a
client machine need not have torch.
"""

from __future__ import annotations

import math
import struct

import numpy as np

#: v2 datatype name -> numpy storage dtype.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

#: Little-endian wire dtypes (the protocol is little-endian regardless of host).
WIRE_DTYPES: dict[str, np.dtype] = {
    name: (dt.newbyteorder("<") if dt.kind not in "bO" and dt.itemsize > 1 else dt)
    for name, dt in NUMPY_DTYPES.items()
}

#: Byte size of one element, for every fixed-size datatype.
ELEMENT_SIZES: dict[str, int] = {
    name: dt.itemsize for name, dt in NUMPY_DTYPES.items() if name != "BYTES"
}

#: Triton config ``DataType`` enum names (``TYPE_FP32``) -> v2 names (``FP32``).
CONFIG_TO_V2: dict[str, str] = {
    **{f"TYPE_{name}": name for name in NUMPY_DTYPES if name != "BYTES"},
    "TYPE_STRING": "BYTES",
}
V2_TO_CONFIG: dict[str, str] = {v: k for k, v in CONFIG_TO_V2.items()}

_NUMPY_TO_V2: dict[np.dtype, str] = {
    dt: name for name, dt in NUMPY_DTYPES.items() if name not in ("BF16", "BYTES")
}
_LENGTH = struct.Struct("<I")


#: The largest finite value of the floating datatypes (BF16 shares FP32's exponent).
_FLOAT_MAX = {"FP16": 65504.0, "BF16": 3.3895313892515355e38, "FP32": 3.4028234663852886e38}


def fill_value_problem(value: float, datatype: str) -> str | None:
    """Why ``value`` cannot fill a tensor of ``datatype``, or None when it can.

    What numpy's ``fill`` would refuse or turn into something else than a number of
    the same size: an integer type takes a finite value within its range (a fraction
    is truncated toward zero), a float type a magnitude within its range (or an
    infinity, or NaN). BOOL takes any value (non-zero is true) and BYTES is filled
    with empty elements whatever the value.
    """
    if datatype in ("BYTES", "FP64", "BOOL"):
        return None
    if datatype in _FLOAT_MAX:
        limit = _FLOAT_MAX[datatype]
        if math.isfinite(value) and abs(value) > limit:
            return f"expected a magnitude up to {limit:g}"
        return None
    info = np.iinfo(NUMPY_DTYPES[datatype])
    if not (math.isfinite(value) and info.min <= math.trunc(value) <= info.max):
        return f"expected a value from {info.min} to {info.max}"
    return None


def is_known(datatype: str) -> bool:
    """True for the 14 v2 datatype names."""
    return datatype in NUMPY_DTYPES


def v2_of_numpy(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype (``uint16`` maps to UINT16, never BF16)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NUMPY_TO_V2[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe v2 datatype") from None


def serialize_bytes(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor: each element as 4-byte LE length + bytes, row-major."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int) -> np.ndarray:
    """Decode ``count`` length-prefixed elements; raises ValueError on a malformed buffer."""
    view = memoryview(buffer)
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise ValueError(
                f"BYTES buffer ends after {index} of {count} elements "
                f"(no room for element {index}'s 4-byte length prefix at offset {offset})"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise ValueError(
                f"BYTES element {index} declares {length} bytes at offset {offset} "
                f"but only {len(view) - offset} remain"
            )
        out[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise ValueError(
            f"BYTES buffer holds {len(view) - offset} trailing bytes after {count} elements"
        )
    return out
