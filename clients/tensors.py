"""numpy <-> KServe v2 tensor encoding for the client side of the protocol.

Requests always carry tensor data in ``raw_input_contents``: little-endian
element bytes in row-major order, or for BYTES each element as a 4-byte
little-endian length followed by its bytes. Responses are decoded from
``raw_output_contents`` or, when a server sends them instead, from the typed
``contents`` fields.

Decoded fixed-size tensors are zero-copy, read-only views of the received
bytes (``np.frombuffer``); call ``.copy()`` before writing to one. BF16
tensors are returned as their raw ``np.uint16`` bit patterns, as everywhere in
batchwire (numpy has no bfloat16); :func:`bf16_to_float32` widens them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchwire.core.datatypes import (
    NUMPY_DTYPES,
    WIRE_DTYPES,
    deserialize_bytes,
    serialize_bytes,
    v2_of_numpy,
)
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos.contents import CONTENTS_FIELDS as PROTOCOL_CONTENTS_FIELDS

__all__ = [
    "InferInput",
    "InputsLike",
    "add_inputs",
    "bf16_to_float32",
    "decode_contents",
    "decode_outputs",
    "decode_tensor",
    "encode_contents",
    "encode_input",
    "float_to_bf16",
    "to_wire_array",
]

#: Typed ``InferTensorContents`` field that carries each datatype (FP16 and
#: BF16 have no field of their own; they travel as ``fp32_contents``).
#: The typed field per datatype; this client also reads FP16/BF16 from fp32_contents,
#: which the protocol leaves undefined (some servers send them that way).
CONTENTS_FIELDS: dict[str, str] = {
    **PROTOCOL_CONTENTS_FIELDS,
    "FP16": "fp32_contents",
    "BF16": "fp32_contents",
}


@dataclass(frozen=True)
class InferInput:
    """One named input tensor for :meth:`InferenceClient.infer`.

    ``datatype`` is the v2 datatype to send (``"FP32"``, ``"BF16"`` ...); by
    default it is inferred from ``data``'s numpy dtype (str / bytes / object
    arrays are BYTES, ``uint16`` is UINT16: pass ``"BF16"`` explicitly).
    """

    name: str
    data: Any
    datatype: str | None = None


#: What ``infer`` accepts as inputs: a name -> array mapping, or a sequence of
#: :class:`InferInput` (or any object with ``name`` / ``data`` / optional
#: ``datatype`` attributes), or ``(name, data)`` / ``(name, data, datatype)`` tuples.
InputsLike = Mapping[str, Any] | Sequence[Any]


def float_to_bf16(values: Any) -> np.ndarray:
    """bfloat16 bit patterns (``np.uint16``) of ``values``, rounded to nearest even."""
    floats = np.asarray(values, dtype=np.float32, order="C")
    bits = floats.view(np.uint32)
    rounded = np.asarray((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nans = np.isnan(floats)
    if nans.any():  # keep NaNs NaN (quiet) instead of letting rounding carry into the sign
        rounded[nans] = (bits[nans] >> 16) | 0x0040
    return rounded


def bf16_to_float32(bits: Any) -> np.ndarray:
    """Widen bfloat16 bit patterns (``np.uint16``) to ``np.float32`` values (exact)."""
    halves = np.asarray(bits, dtype=np.uint16, order="C")
    return np.asarray(halves.astype(np.uint32) << 16).view(np.float32)


def to_wire_array(data: Any, datatype: str | None = None) -> tuple[np.ndarray, str]:
    """``data`` as an array in the storage dtype of ``datatype``, and that datatype.

    Without ``datatype`` it is inferred from the dtype. With one, the array is
    converted if numpy can do so within the same kind (``float64`` -> FP16,
    ``int64`` -> INT32 ...); floating arrays are rounded to BF16, and ``uint16``
    arrays are taken as BF16 bit patterns. Anything else raises ``ValueError``.
    """
    array = data if isinstance(data, np.ndarray) else np.asarray(data)
    if datatype is None:
        datatype = v2_of_numpy(array.dtype)
    if datatype not in NUMPY_DTYPES:
        raise ValueError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(NUMPY_DTYPES)}"
        )
    if datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise ValueError(
                f"BYTES tensors need a bytes, str or object array, got dtype {array.dtype}"
            )
        return array, datatype
    if datatype == "BF16":
        if array.dtype.kind == "u" and array.dtype.itemsize == 2:
            return array.astype(WIRE_DTYPES["BF16"], copy=False), datatype
        if array.dtype.kind in "fiub":
            return float_to_bf16(array).astype(WIRE_DTYPES["BF16"], copy=False), datatype
        raise ValueError(f"cannot send a {array.dtype} array as BF16")
    wire = WIRE_DTYPES[datatype]
    if array.dtype != wire:
        if not np.can_cast(array.dtype, wire, casting="same_kind"):
            raise ValueError(f"cannot send a {array.dtype} array as {datatype} ({wire})")
        array = array.astype(wire)
    return array, datatype


def encode_input(
    name: str, data: Any, datatype: str | None = None
) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    """The ``InferInputTensor`` header and raw bytes for one input tensor."""
    array, datatype = to_wire_array(data, datatype)
    raw = serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=array.shape)
    return tensor, raw


def _iter_inputs(inputs: InputsLike) -> list[tuple[str, Any, str | None]]:
    if isinstance(inputs, Mapping):
        return [(str(name), data, None) for name, data in inputs.items()]
    if isinstance(inputs, (str, bytes, np.ndarray)):
        raise TypeError("inputs must be a mapping of name -> array or a sequence of inputs")
    items: list[tuple[str, Any, str | None]] = []
    for item in inputs:
        if isinstance(item, tuple):
            if len(item) not in (2, 3):
                raise TypeError(
                    f"input tuples are (name, data) or (name, data, datatype), got {len(item)} items"
                )
            items.append((item[0], item[1], item[2] if len(item) == 3 else None))
        elif hasattr(item, "name") and hasattr(item, "data"):
            items.append((item.name, item.data, getattr(item, "datatype", None)))
        else:
            raise TypeError(f"cannot use {type(item).__name__} as an input tensor")
    return items


def add_inputs(
    request: pb.ModelInferRequest,
    inputs: InputsLike,
    datatypes: Mapping[str, str] | None = None,
) -> None:
    """Append ``inputs`` to ``request.inputs`` / ``request.raw_input_contents``.

    ``datatypes`` maps input names to v2 datatypes, overriding inference from
    the dtype (an :class:`InferInput`'s own ``datatype`` wins over both).
    """
    datatypes = datatypes or {}
    for name, data, datatype in _iter_inputs(inputs):
        tensor, raw = encode_input(name, data, datatype or datatypes.get(name))
        request.inputs.append(tensor)
        request.raw_input_contents.append(raw)


def encode_contents(data: Any, datatype: str | None = None) -> pb.InferTensorContents:
    """Typed ``InferTensorContents`` for ``data`` (for servers or tests; requests use raw)."""
    array, datatype = to_wire_array(data, datatype)
    flat = array.reshape(-1)
    contents = pb.InferTensorContents()
    field = getattr(contents, CONTENTS_FIELDS[datatype])
    if datatype == "BYTES":
        field.extend(
            item.encode("utf-8") if isinstance(item, str) else bytes(item) for item in flat
        )
    elif datatype == "BF16":
        field.extend(bf16_to_float32(flat).tolist())
    else:
        field.extend(flat.tolist())
    return contents


def _element_count(shape: Sequence[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def decode_contents(
    datatype: str, shape: Sequence[int], contents: pb.InferTensorContents
) -> np.ndarray:
    """An array from the typed ``contents`` of a tensor."""
    if datatype not in NUMPY_DTYPES:
        raise ValueError(f"unknown datatype {datatype!r}")
    shape = tuple(shape)
    count = _element_count(shape)
    field = getattr(contents, CONTENTS_FIELDS[datatype])
    if len(field) != count:
        raise ValueError(
            f"{datatype} tensor of shape {list(shape)} needs {count} elements, "
            f"{CONTENTS_FIELDS[datatype]} holds {len(field)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(field)
    elif datatype == "BF16":
        array = float_to_bf16(np.array(field, dtype=np.float32))
    else:
        array = np.array(field, dtype=NUMPY_DTYPES[datatype])
    return array.reshape(shape)


def decode_tensor(
    datatype: str,
    shape: Sequence[int],
    raw: bytes | memoryview | None = None,
    contents: pb.InferTensorContents | None = None,
) -> np.ndarray:
    """An array from a tensor's raw bytes, or from its typed ``contents`` if ``raw`` is None.

    Fixed-size datatypes are returned as read-only views of ``raw`` (no copy).
    Raises ``ValueError`` when the data does not match ``datatype`` and ``shape``.
    """
    if raw is None:
        return decode_contents(datatype, shape, contents or pb.InferTensorContents())
    if datatype not in NUMPY_DTYPES:
        raise ValueError(f"unknown datatype {datatype!r}")
    shape = tuple(shape)
    count = _element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count).reshape(shape)
    wire = WIRE_DTYPES[datatype]
    expected = count * wire.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{datatype} tensor of shape {list(shape)} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=wire).reshape(shape)


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Every output of ``response`` as an array, keyed by name, in response order."""
    raws = response.raw_output_contents
    outputs = response.outputs
    if raws and len(raws) != len(outputs):
        raise ValueError(
            f"response has {len(outputs)} outputs but {len(raws)} raw_output_contents entries"
        )
    decoded: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(outputs):
        raw = raws[index] if raws else None
        try:
            decoded[tensor.name] = decode_tensor(
                tensor.datatype, tensor.shape, raw, tensor.contents
            )
        except ValueError as exc:
            raise ValueError(f"output {tensor.name!r}: {exc}") from None
    return decoded
