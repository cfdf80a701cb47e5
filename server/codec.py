"""Protobuf <-> data-plane translation for ModelInfer and ModelStreamInfer.

:data:`GRPC_CODEC` is the gRPC front end's
:class:`~batchwire.server.inference_call.Codec`: the pipeline decodes each request
with it once the model version is resolved and encodes the result with it.

Hot path. Inputs become zero-copy ``np.frombuffer`` views of the received
bytes; outputs are serialized once each with ``tobytes()``. No per-element
Python loops except for BYTES and typed ``contents`` (which are lists already).
The checks below are comparisons on what the message holds; parameters are read
only where a message (or one of its tensors) has some.

Decoding refuses, with INVALID_ARGUMENT naming the field, what was expected and
what arrived:

- an ``id`` longer than :data:`MAX_ID_LENGTH` characters, an input or requested
  output name longer than :data:`MAX_NAME_LENGTH` (names and ids are echoed in
  error messages, which travel in gRPC trailers of a few KiB at most);
- a ``raw_input_contents`` count other than one entry per input not in shared
  memory, an input with both ``contents`` and raw data, an input name or a requested
  output name given twice;
- an unknown datatype; a shape with more than :data:`MAX_DIMS` dimensions, a
  negative dimension, or more than :data:`MAX_ELEMENTS` elements (for a shape
  with a zero dimension: its other dimensions multiplied), so that every byte
  size fits in int64;
- data that does not fit the shape: raw bytes of another size; for BYTES a
  malformed length-prefixed buffer (a shape with more elements than the buffer has
  bytes is refused before anything is allocated); typed ``contents``
  with another count, in a field that is not the datatype's, or (INT8, INT16,
  UINT8, UINT16, which travel widened) with a value outside the datatype's range;
- a request parameter Triton defines, of the wrong type or out of range:

  ========================================  =============================================
  ``priority``                              int64_param >= 0 or uint64_param
  ``timeout`` (microseconds)                int64_param >= 0 or uint64_param
  ``sequence_id``                           int64_param, uint64_param or string_param
  ``sequence_start``, ``sequence_end``      bool_param
  ``triton_enable_empty_final_response``    bool_param (accepted, no effect)
  any other ``triton_*`` key                refused: the prefix is reserved for Triton
  ========================================  =============================================

  Triton takes ``priority`` as either integer and ``timeout`` as int64_param only;
  the uint64_param ``timeout`` is accepted here as well. Any other key is a custom
  parameter: Triton hands those to the backend, batchwire's models take none, so
  they are passed over whatever their type;
- a tensor parameter of the shared-memory or classification extensions of the
  wrong type or out of range: ``shared_memory_region`` (string_param),
  ``shared_memory_offset``, ``shared_memory_byte_size`` (int64_param >= 0 or
  uint64_param; Triton takes int64_param only), on outputs ``classification``
  (int64_param >= 1); and, as Triton, an offset or byte size without a region, a
  region without a byte size, an output with both a region and ``classification``,
  an input in shared memory that also has ``contents``. Outputs' parameters are
  always read; inputs' only in a message with fewer ``raw_input_contents`` entries
  than inputs (with raw data for every input, no parameter changes what the data
  means). Other tensor parameters (``binary_data``, ``binary_data_size``: HTTP's)
  are passed over.

Shared memory (Triton's system shared-memory extension): an input whose parameters
name a region takes its data from that region and no ``raw_input_contents`` entry;
the other inputs take the raw entries in order (then their count must be the number
of such inputs). Decoding checks such an input's datatype and shape and records
where its data lies (``InferenceRequest.shared``); the shared-memory stage
(:mod:`batchwire.server.shared_memory_stage`) reads it. An output whose parameters
name a region is written there by that stage, and its response entry carries name,
datatype and shape with an empty ``raw_output_contents`` entry (one entry per
output, as Triton, so that tritonclient's ``as_numpy`` finds the others).

Well-formed requests for features batchwire lacks are UNIMPLEMENTED: a sequence
(non-zero or non-empty ``sequence_id``, a true ``sequence_start`` or
``sequence_end``; tritonclient sends ``sequence_id`` 0 with plain requests),
classification.

The request is checked against the model afterwards (input and output names, an
empty one being an unknown one, datatypes, shapes, batch size) by
:func:`batchwire.core.validation.validate_request`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from batchwire.core.datatypes import WIRE_DTYPES, deserialize_bytes, is_known, serialize_bytes
from batchwire.core.errors import InvalidInputError, UnsupportedError
from batchwire.core.spec import ModelSpec
from batchwire.core.types import InferenceRequest, InferenceResult, SharedTensor, SharedTensors
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos.contents import CONTENTS_FIELDS

#: Longest request ``id`` accepted, in characters (a UUID has 36).
MAX_ID_LENGTH = 1024
#: Longest input or requested output name accepted, in characters.
MAX_NAME_LENGTH = 1024
#: Most dimensions a tensor shape may have (numpy 1.x's limit; numpy 2 allows 64).
MAX_DIMS = 32
#: Most elements a tensor shape may declare: 8 bytes each (the widest element, a
#: BYTES tensor's object pointer) must still fit in int64.
MAX_ELEMENTS = (2**63 - 1) // 8

#: Integer datatypes that travel in a wider ``contents`` field: their value range.
_NARROWED_RANGES: dict[str, tuple[int, int]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
}
#: Longest parameter value quoted in a message.
_QUOTE_LIMIT = 60
_UNSIGNED = "int64_param >= 0 or uint64_param"
_SEQUENCE_ID_TYPES = ("int64_param", "uint64_param", "string_param")
_SEQUENCE_FLAGS = ("sequence_start", "sequence_end")
#: The ``triton_`` keys Triton accepts in a request; the rest of the prefix is reserved.
_TRITON_PARAMETERS = ("triton_enable_empty_final_response",)


def _got(value: pb.InferParameter, choice: str | None) -> str:
    """``<oneof field> <value>`` of a parameter, for messages (long strings cut short)."""
    if choice is None:
        return "no value"
    text = repr(getattr(value, choice))
    if len(text) > _QUOTE_LIMIT:
        text = text[: _QUOTE_LIMIT - 3] + "..."
    return f"{choice} {text}"


def _bad_parameter(
    value: pb.InferParameter, model: str, key: str, expected: str, tensor: str = ""
) -> InvalidInputError:
    choice = value.WhichOneof("parameter_choice")
    where = (
        f"model '{model}' {tensor}: parameter" if tensor else f"model '{model}': request parameter"
    )
    return InvalidInputError(f"{where} '{key}' must be {expected}, got {_got(value, choice)}")


def _unsigned(value: pb.InferParameter, model: str, key: str, tensor: str = "") -> int:
    """A parameter that counts something: int64_param >= 0 or uint64_param."""
    choice = value.WhichOneof("parameter_choice")
    if choice == "uint64_param":
        return value.uint64_param
    if choice == "int64_param" and value.int64_param >= 0:
        return value.int64_param
    raise _bad_parameter(value, model, key, _UNSIGNED, tensor)


def _flag(value: pb.InferParameter, model: str, key: str) -> bool:
    if value.WhichOneof("parameter_choice") != "bool_param":
        raise _bad_parameter(value, model, key, "bool_param")
    return value.bool_param


def _apply_request_parameters(
    model: str, request: InferenceRequest, parameters: Mapping[str, pb.InferParameter]
) -> None:
    """Checks the request parameters Triton defines and carries them onto ``request``."""
    for key, value in parameters.items():
        if key == "priority":
            request.priority = _unsigned(value, model, key)
        elif key == "timeout":
            request.timeout_us = _unsigned(value, model, key)
        elif key == "sequence_id":
            choice = value.WhichOneof("parameter_choice")
            if choice not in _SEQUENCE_ID_TYPES:
                raise _bad_parameter(value, model, key, "int64_param, uint64_param or string_param")
            if getattr(value, choice):
                raise UnsupportedError(
                    f"model '{model}': sequence batching (parameter '{key}') is not supported"
                )
        elif key in _SEQUENCE_FLAGS:
            if _flag(value, model, key):
                raise UnsupportedError(
                    f"model '{model}': sequence batching (parameter '{key}') is not supported"
                )
        elif key.startswith("triton_"):
            if key not in _TRITON_PARAMETERS:
                raise InvalidInputError(
                    f"model '{model}': request parameter '{key[:_QUOTE_LIMIT]}' is reserved "
                    "(keys starting with 'triton_' are Triton's; accepted: "
                    f"{', '.join(_TRITON_PARAMETERS)})"
                )
            _flag(value, model, key)


def _shared_tensor(
    model: str, tensor: str, parameters: Mapping[str, pb.InferParameter], output: bool
) -> SharedTensor | None:
    """Where a tensor lies in shared memory, from its parameters (None: not there).

    Checks the type and range of the shared-memory and classification parameters as
    the module docstring says, and their combinations as Triton does. ``tensor`` is
    ``input 'NAME'`` or ``output 'NAME'``, as messages name it.
    """
    region: str | None = None
    offset: int | None = None
    size: int | None = None
    classification = False
    for key, value in parameters.items():
        if key == "shared_memory_region":
            if value.WhichOneof("parameter_choice") != "string_param":
                raise _bad_parameter(value, model, key, "string_param", tensor)
            region = value.string_param
        elif key == "shared_memory_offset":
            offset = _unsigned(value, model, key, tensor)
        elif key == "shared_memory_byte_size":
            size = _unsigned(value, model, key, tensor)
        elif output and key == "classification":
            if value.WhichOneof("parameter_choice") != "int64_param" or value.int64_param < 1:
                raise _bad_parameter(value, model, key, "int64_param >= 1", tensor)
            classification = True
    if region is None:
        for key, given in (("shared_memory_offset", offset), ("shared_memory_byte_size", size)):
            if given is not None:
                raise InvalidInputError(
                    f"model '{model}' {tensor}: parameter '{key}' can not be specified "
                    "without parameter 'shared_memory_region'"
                )
        if classification:
            raise UnsupportedError(
                f"model '{model}' {tensor}: the classification extension is not supported "
                "(parameter 'classification')"
            )
        return None
    if size is None:
        raise InvalidInputError(
            f"model '{model}' {tensor}: parameter 'shared_memory_byte_size' must be "
            "specified along with parameter 'shared_memory_region'"
        )
    if classification:
        raise InvalidInputError(
            f"model '{model}' {tensor}: an output can't set both 'shared_memory_region' "
            "and 'classification'"
        )
    return SharedTensor(region, offset or 0, size)


def _name_too_long(model: str, kind: str, name: str) -> InvalidInputError:
    return InvalidInputError(
        f"model '{model}': {kind} name '{name[:_QUOTE_LIMIT]}...' has {len(name)} characters, "
        f"expected at most {MAX_NAME_LENGTH}"
    )


def _checked_shape(
    model: str, tensor: pb.ModelInferRequest.InferInputTensor
) -> tuple[tuple[int, ...], int]:
    """The input's shape and element count, once its datatype and shape are sane."""
    name = tensor.name
    datatype = tensor.datatype
    if not is_known(datatype):
        raise InvalidInputError(
            f"model '{model}' input '{name}': unknown datatype '{datatype[:_QUOTE_LIMIT]}' "
            f"(expected one of {', '.join(WIRE_DTYPES)})"
        )
    dims = tensor.shape
    if len(dims) > MAX_DIMS:
        raise InvalidInputError(
            f"model '{model}' input '{name}': shape has {len(dims)} dimensions, "
            f"expected at most {MAX_DIMS}"
        )
    shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise InvalidInputError(
            f"model '{model}' input '{name}': shape dimensions must be >= 0, got {list(shape)}"
        )
    count = math.prod(shape)
    # An empty shape holds nothing, yet numpy refuses one whose other dimensions
    # multiply past its byte-size limit: those count for the bound.
    if (count or math.prod(d for d in shape if d)) > MAX_ELEMENTS:
        raise InvalidInputError(
            f"model '{model}' input '{name}': shape {list(shape)} has too many elements, "
            f"expected at most {MAX_ELEMENTS} (byte sizes must fit in int64)"
        )
    return shape, count


def tensor_from_buffer(
    model: str,
    name: str,
    datatype: str,
    shape: tuple[int, ...],
    count: int,
    data: bytes | memoryview,
    region: str = "",
) -> np.ndarray:
    """Input ``name``'s array over ``data`` (raw bytes, or a shared-memory ``region``'s window).

    Fixed-size datatypes are a zero-copy view that must hold exactly the shape's bytes;
    BYTES is parsed as length-prefixed elements. Raises InvalidInputError naming the
    input, expected against got (and the region, for shared memory).
    """
    size = len(data)
    if datatype == "BYTES":
        if count > size:
            # Deserializing allocates an 8-byte slot per element first: this bounds
            # that by the data's size. Each element takes at least its 4-byte prefix,
            # so any count over size / 4 fails there, more precisely.
            held = (
                f"the {size} bytes of shared memory region '{region}'"
                if region
                else (f"its {size} raw bytes")
            )
            raise InvalidInputError(
                f"model '{model}' input '{name}': shape {list(shape)} has {count} BYTES "
                f"elements, expected at most {size >> 2} (one 4-byte length prefix each in "
                f"{held})"
            )
        try:
            return deserialize_bytes(data, count).reshape(shape)
        except ValueError as exc:
            where = f" in shared memory region '{region}'" if region else ""
            raise InvalidInputError(
                f"model '{model}' input '{name}': malformed BYTES data{where} for shape "
                f"{list(shape)}: {exc}"
            ) from None
    dtype = WIRE_DTYPES[datatype]
    expected = count * dtype.itemsize
    if size != expected:
        got = f"shared_memory_byte_size {size} (region '{region}')" if region else str(size)
        raise InvalidInputError(
            f"model '{model}' input '{name}': expected {expected} bytes for {datatype} "
            f"shape {list(shape)}, got {got}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_tensor(
    model: str, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> np.ndarray:
    name = tensor.name
    datatype = tensor.datatype
    shape, count = _checked_shape(model, tensor)
    if raw is not None:
        return tensor_from_buffer(model, name, datatype, shape, count, raw)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"model '{model}' input '{name}': {datatype} data must be sent in "
            "raw_input_contents (InferTensorContents has no field for it)"
        )
    contents = tensor.contents
    for descriptor, _ in contents.ListFields():
        if descriptor.name != field:
            raise InvalidInputError(
                f"model '{model}' input '{name}': expected {datatype} values in "
                f"contents.{field}, got contents.{descriptor.name}"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"model '{model}' input '{name}': expected {count} values in contents.{field} "
            f"for shape {list(shape)}, got {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    bounds = _NARROWED_RANGES.get(datatype)
    if bounds is not None and count:
        low, high = bounds
        if min(values) < low or max(values) > high:
            bad = next(v for v in values if not low <= v <= high)
            raise InvalidInputError(
                f"model '{model}' input '{name}': {datatype} values in contents.{field} "
                f"must be within {low}..{high}, got {bad}"
            )
    return np.asarray(values, dtype=WIRE_DTYPES[datatype]).reshape(shape)


def _requested_outputs(
    model: str,
    outputs: Sequence[pb.ModelInferRequest.InferRequestedOutputTensor],
    shared: dict[str, SharedTensor],
) -> tuple[str, ...]:
    """The requested output names, in order, once each is known to be sane and unique.

    Outputs to be written into shared memory are added to ``shared``.
    """
    # One pass, reading each output once: as cheap as the tuple of names it replaces.
    names: list[str] = []
    for out in outputs:
        name = out.name
        if len(name) > MAX_NAME_LENGTH:
            raise _name_too_long(model, "output", name)
        if out.parameters:
            where = _shared_tensor(model, f"output '{name}'", out.parameters, output=True)
            if where is not None:
                shared[name] = where
        names.append(name)
    if len(names) > 1 and len(set(names)) != len(names):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InvalidInputError(f"model '{model}': output '{name}' is requested twice")
            seen.add(name)
    return tuple(names)


def _check_input_name(model: str, name: str, seen: Mapping[str, str]) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise _name_too_long(model, "input", name)
    if name in seen:
        raise InvalidInputError(f"model '{model}': input '{name}' is given twice")


def _contents_and_raw(model: str, name: str) -> InvalidInputError:
    return InvalidInputError(
        f"model '{model}' input '{name}': data given both in contents and "
        "raw_input_contents (use one)"
    )


def _decode_mixed(
    model: str,
    msg: pb.ModelInferRequest,
    inputs: dict[str, np.ndarray],
    datatypes: dict[str, str],
) -> dict[str, tuple[SharedTensor, str, tuple[int, ...]]] | None:
    """Decode inputs when not every one has a raw_input_contents entry.

    As in Triton: an input with shared-memory parameters takes its data from its region
    (read by the shared-memory stage; here only its shape is checked) and no raw entry;
    the other inputs take the raw entries in order, or their ``contents`` when the
    message has no raw entries at all. Returns the shared-memory inputs (None: none).
    """
    raw = msg.raw_input_contents
    n_raw = len(raw)
    shared: dict[str, tuple[SharedTensor, str, tuple[int, ...]]] | None = None
    used = 0
    for tensor in msg.inputs:
        name = tensor.name
        _check_input_name(model, name, datatypes)
        where = (
            _shared_tensor(model, f"input '{name}'", tensor.parameters, output=False)
            if tensor.parameters
            else None
        )
        if where is not None:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"model '{model}' input '{name}': unexpected 'contents' for an input in "
                    f"shared memory (region '{where.region[:_QUOTE_LIMIT]}')"
                )
            shape, _ = _checked_shape(model, tensor)
            if shared is None:
                shared = {}
            shared[name] = (where, tensor.datatype, shape)
        elif tensor.HasField("contents"):
            if n_raw:
                raise _contents_and_raw(model, name)
            inputs[name] = _decode_tensor(model, tensor, None)
        elif used < n_raw:
            inputs[name] = _decode_tensor(model, tensor, raw[used])
            used += 1
        elif n_raw:
            raise _raw_count(model, msg, n_raw)
        else:  # no data anywhere: only an empty tensor fits
            inputs[name] = _decode_tensor(model, tensor, None)
        datatypes[name] = tensor.datatype
    if used != n_raw:
        raise _raw_count(model, msg, n_raw)
    return shared


def _raw_count(model: str, msg: pb.ModelInferRequest, n_raw: int) -> InvalidInputError:
    in_memory = sum(1 for t in msg.inputs if "shared_memory_region" in t.parameters)
    expected = len(msg.inputs) - in_memory
    where = f" not in shared memory ({expected}; {in_memory} in shared memory)"
    return InvalidInputError(
        f"model '{model}': expected one raw_input_contents entry per input"
        f"{where if in_memory else f' ({expected})'}, got {n_raw}"
    )


def decode_infer_request(
    msg: pb.ModelInferRequest, spec: ModelSpec, deadline: float | None = None
) -> tuple[InferenceRequest, dict[str, str]]:
    """Decode ``msg`` into an :class:`InferenceRequest` and the declared input datatypes.

    Checks the message's structure, its parameters and its tensors' data as the
    module docstring lists; the request is checked against the model by
    :func:`batchwire.core.validation.validate_request`. Raises InvalidInputError, or
    UnsupportedError for a feature batchwire lacks.
    """
    model = spec.name
    if len(msg.id) > MAX_ID_LENGTH:
        raise InvalidInputError(
            f"model '{model}': request id has {len(msg.id)} characters, "
            f"expected at most {MAX_ID_LENGTH}"
        )
    raw = msg.raw_input_contents
    n_raw = len(raw)
    tensors = msg.inputs
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    if n_raw == len(tensors):
        # Every input's data is in raw_input_contents (the common case): no tensor
        # parameter changes what the data means, and reading an input's parameters
        # costs a map wrapper per input on the hot path.
        for index, tensor in enumerate(tensors):
            name = tensor.name
            if len(name) > MAX_NAME_LENGTH or name in datatypes:  # inline: per input
                _check_input_name(model, name, datatypes)
            if tensor.HasField("contents"):
                raise _contents_and_raw(model, name)
            inputs[name] = _decode_tensor(model, tensor, raw[index])
            datatypes[name] = tensor.datatype
        shared_inputs = None
    else:
        shared_inputs = _decode_mixed(model, msg, inputs, datatypes)
    shared_outputs: dict[str, SharedTensor] = {}
    outputs = msg.outputs
    request = InferenceRequest(
        inputs=inputs,
        requested_outputs=_requested_outputs(model, outputs, shared_outputs) if outputs else (),
        id=msg.id,
        deadline=deadline,
    )
    if shared_inputs or shared_outputs:
        request.shared = SharedTensors(shared_inputs or {}, shared_outputs)
    if msg.parameters:
        _apply_request_parameters(model, request, msg.parameters)
    return request, datatypes


def encode_infer_response(
    msg: pb.ModelInferRequest, spec: ModelSpec, result: InferenceResult
) -> pb.ModelInferResponse:
    """The response to ``msg``: one raw_output_contents entry per output, in result order."""
    response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=msg.id)
    outputs = response.outputs
    raw = response.raw_output_contents
    output_specs = spec.output_map
    shared = result.shared_outputs
    for name, array in result.outputs.items():
        datatype = output_specs[name].datatype
        outputs.add(name=name, datatype=datatype, shape=array.shape)
        if shared and name in shared:
            raw.append(b"")  # written into its region; one entry per output, as Triton
            continue
        raw.append(serialize_bytes(array) if datatype == "BYTES" else array.tobytes())
    return response


def stream_error_response(msg: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A stream's answer to a failed request: ``error_message``, and the request's id.

    ``message`` is sent as given: the servicer passes it through
    ``status.describe``, which caps its length as for every other status message.
    """
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=msg.model_name, model_version=msg.model_version, id=msg.id
        ),
    )


def routing_key(msg: pb.ModelInferRequest) -> str:
    """The request parameter ``routing_key`` (a string; "" when absent), for traffic splits.

    Raises InvalidInputError for a ``routing_key`` that is not a string_param.
    """
    parameters = msg.parameters
    if not parameters or "routing_key" not in parameters:
        return ""
    value = parameters["routing_key"]
    if value.WhichOneof("parameter_choice") != "string_param":
        raise _bad_parameter(value, msg.model_name, "routing_key", "string_param")
    return value.string_param


def request_id(msg: pb.ModelInferRequest) -> str:
    """The request's ``id`` ("" when it has none), read by the audit log whether or not
    the request was decoded."""
    return msg.id


class GrpcCodec:
    """ModelInferRequest in, ModelInferResponse out (the data plane's Codec for gRPC)."""

    __slots__ = ()
    decode = staticmethod(decode_infer_request)
    encode = staticmethod(encode_infer_response)
    routing_key = staticmethod(routing_key)
    request_id = staticmethod(request_id)


GRPC_CODEC = GrpcCodec()
