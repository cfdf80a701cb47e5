"""Checks a decoded request against the model spec before it is queued.

Every message names the tensor and says what was expected and what arrived,
so a caller can fix the request without reading the server's logs.
"""

from __future__ import annotations

import numpy as np

from batchwire.core.datatypes import NUMPY_DTYPES
from batchwire.core.errors import InvalidInputError
from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest


def _shape_str(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def expected_shape(spec: ModelSpec, tensor: TensorSpec) -> tuple[int, ...]:
    """The full shape a request must carry for ``tensor`` (-1 where anything goes)."""
    return (-1, *tensor.dims) if spec.batched else tensor.dims


def byte_size(array: np.ndarray) -> int:
    """Bytes ``array`` takes on the wire: its data, or for BYTES (object) tensors each
    element's length plus its 4-byte length prefix, as the protocol serializes them."""
    if array.dtype != np.object_:
        return array.nbytes
    return 4 * array.size + sum(len(item) for item in array.flat)


def _check_size(spec: ModelSpec, tensor: TensorSpec, array: np.ndarray) -> None:
    size = byte_size(array)
    if size > spec.max_input_bytes:
        # Triton's --http-max-input-size refusal is INVALID_ARGUMENT too: the same
        # request can never succeed, so it is not one to retry.
        raise InvalidInputError(
            f"model '{spec.name}' input '{tensor.name}' has a byte size of {size} bytes, "
            f"over the model's limit of {spec.max_input_bytes} bytes "
            "(parameter batchwire.max_input_bytes)"
        )


def _check_shape(spec: ModelSpec, tensor: TensorSpec, shape: tuple[int, ...]) -> None:
    wanted = expected_shape(spec, tensor)
    if len(shape) != len(wanted) or any(
        w != -1 and w != g for w, g in zip(wanted, shape, strict=False)
    ):
        raise InvalidInputError(
            f"model '{spec.name}' input '{tensor.name}': expected shape {_shape_str(wanted)}, "
            f"got {_shape_str(shape)}"
        )


def validate_request(spec: ModelSpec, request: InferenceRequest, datatypes: dict[str, str]) -> None:
    """Raise :class:`InvalidInputError` unless ``request`` fits ``spec``.

    With ``spec.max_input_bytes`` set, an input larger than that (see :func:`byte_size`)
    is refused, naming the input, its size and the limit. A request to a batching model
    must carry at least one input (one whose inputs are all optional could omit them all).

    ``datatypes`` maps each input name to the v2 datatype the caller declared
    (arrays alone cannot tell BF16 from UINT16).
    """
    inputs = request.inputs
    known = spec.input_map
    limited = spec.max_input_bytes > 0
    for name in inputs:
        if name not in known:
            raise InvalidInputError(
                f"model '{spec.name}' has no input '{name}' (expected inputs: "
                f"{', '.join(t.name for t in spec.inputs)})"
            )
    batch: int | None = None
    for tensor in spec.inputs:
        array = inputs.get(tensor.name)
        if array is None:
            if tensor.optional:
                continue
            raise InvalidInputError(
                f"model '{spec.name}' input '{tensor.name}' is missing "
                f"(expected {tensor.datatype} {_shape_str(expected_shape(spec, tensor))})"
            )
        declared = datatypes.get(tensor.name, tensor.datatype)
        if declared != tensor.datatype:
            raise InvalidInputError(
                f"model '{spec.name}' input '{tensor.name}': expected datatype "
                f"{tensor.datatype}, got {declared}"
            )
        if array.dtype != NUMPY_DTYPES[tensor.datatype]:
            raise InvalidInputError(
                f"model '{spec.name}' input '{tensor.name}': expected {tensor.datatype} "
                f"data, got numpy {array.dtype}"
            )
        if limited:
            _check_size(spec, tensor, array)
        _check_shape(spec, tensor, array.shape)
        if spec.batched:
            size = array.shape[0]
            if batch is None:
                batch = size
            elif size != batch:
                raise InvalidInputError(
                    f"model '{spec.name}': inputs disagree on the batch dimension: "
                    f"'{tensor.name}' has {size}, an earlier input has {batch}"
                )
    if spec.batched and batch is None:
        # Only possible when every input is optional: without one there is no batch
        # dimension to batch the request by.
        raise InvalidInputError(
            f"model '{spec.name}': the request has no inputs, expected at least one of "
            f"{', '.join(t.name for t in spec.inputs)} (its first dimension is the batch size)"
        )
    if spec.batched and batch is not None:
        if batch < 1:
            raise InvalidInputError(
                f"model '{spec.name}': batch dimension must be >= 1, got {batch}"
            )
        if batch > spec.max_batch_size:
            raise InvalidInputError(
                f"model '{spec.name}': batch size {batch} exceeds max_batch_size "
                f"{spec.max_batch_size}"
            )
    outputs = spec.output_map
    for name in request.requested_outputs:
        if name not in outputs:
            raise InvalidInputError(
                f"model '{spec.name}' has no output '{name}' (expected outputs: "
                f"{', '.join(t.name for t in spec.outputs)})"
            )
