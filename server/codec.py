"""Protobuf <-> data-plane translation for ModelInfer and ModelStreamInfer.

:data:`GRPC_CODEC` is the gRPC front end's
:class:`~batchwire.server.inference_call.Codec`: the pipeline decodes each request
with it once the model version is resolved and encodes the result with it.

Hot path. Inputs become zero-copy ``np.frombuffer`` views of the received
bytes; outputs are serialized once each with ``tobytes()``. No per-element
Python loops except for BYTES and typed ``contents`` (which are lists already).
"""

from __future__ import annotations

import math

import numpy as np

from batchwire.core.datatypes import WIRE_DTYPES, deserialize_bytes, is_known, serialize_bytes
from batchwire.core.errors import InvalidInputError, UnsupportedError
from batchwire.core.spec import ModelSpec
from batchwire.core.types import InferenceRequest, InferenceResult
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos.contents import CONTENTS_FIELDS

#: Request parameters that select features batchwire does not implement.
_UNSUPPORTED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


def _parameter_int(model: str, key: str, value: pb.InferParameter) -> int:
    choice = value.WhichOneof("parameter_choice")
    if choice == "int64_param":
        return value.int64_param
    if choice == "uint64_param":
        return value.uint64_param
    raise InvalidInputError(
        f"model '{model}': request parameter '{key}' must be an integer "
        f"(int64_param or uint64_param), got {choice or 'no value'}"
    )


def _decode_tensor(
    model: str, tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> np.ndarray:
    name = tensor.name
    datatype = tensor.datatype
    if not is_known(datatype):
        raise InvalidInputError(
            f"model '{model}' input '{name}': unknown datatype '{datatype}' (expected one of "
            f"{', '.join(WIRE_DTYPES)})"
        )
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInputError(
            f"model '{model}' input '{name}': shape dimensions must be >= 0, got {list(shape)}"
        )
    count = math.prod(shape)
    if raw is not None:
        if datatype == "BYTES":
            try:
                return deserialize_bytes(raw, count).reshape(shape)
            except ValueError as exc:
                raise InvalidInputError(
                    f"model '{model}' input '{name}': malformed BYTES data for shape "
                    f"{list(shape)}: {exc}"
                ) from None
        dtype = WIRE_DTYPES[datatype]
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidInputError(
                f"model '{model}' input '{name}': expected {expected} bytes for {datatype} "
                f"shape {list(shape)}, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"model '{model}' input '{name}': {datatype} data must be sent in "
            "raw_input_contents (InferTensorContents has no field for it)"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"model '{model}' input '{name}': expected {count} values in contents.{field} "
            f"for shape {list(shape)}, got {len(values)}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = list(values)
        return array.reshape(shape)
    return np.asarray(values, dtype=WIRE_DTYPES[datatype]).reshape(shape)


def decode_infer_request(
    msg: pb.ModelInferRequest, spec: ModelSpec, deadline: float | None = None
) -> tuple[InferenceRequest, dict[str, str]]:
    """Decode ``msg`` into an :class:`InferenceRequest` and the declared input datatypes.

    Checks the wire-level structure (raw vs typed contents, byte sizes); the
    request is checked against the model by
    :func:`batchwire.core.validation.validate_request`.
    """
    model = spec.name
    raw = msg.raw_input_contents
    n_raw = len(raw)
    if n_raw and n_raw != len(msg.inputs):
        raise InvalidInputError(
            f"model '{model}': expected one raw_input_contents entry per input "
            f"({len(msg.inputs)}), got {n_raw}"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(msg.inputs):
        if tensor.name in inputs:
            raise InvalidInputError(f"model '{model}': input '{tensor.name}' is given twice")
        if n_raw and tensor.HasField("contents"):
            raise InvalidInputError(
                f"model '{model}' input '{tensor.name}': data given both in contents and "
                "raw_input_contents (use one)"
            )
        inputs[tensor.name] = _decode_tensor(model, tensor, raw[index] if n_raw else None)
        datatypes[tensor.name] = tensor.datatype
    request = InferenceRequest(
        inputs=inputs,
        requested_outputs=tuple(out.name for out in msg.outputs),
        id=msg.id,
        deadline=deadline,
    )
    if msg.parameters:
        for key, value in msg.parameters.items():
            if key == "priority":
                request.priority = _parameter_int(model, key, value)
            elif key == "timeout":
                request.timeout_us = _parameter_int(model, key, value)
            elif key in _UNSUPPORTED_PARAMETERS:
                choice = value.WhichOneof("parameter_choice")
                # tritonclient sends sequence_id 0 / start false for plain requests.
                if choice and getattr(value, choice):
                    raise UnsupportedError(
                        f"model '{model}': sequence batching (parameter '{key}') is not supported"
                    )
    return request, datatypes


def encode_infer_response(
    msg: pb.ModelInferRequest, spec: ModelSpec, result: InferenceResult
) -> pb.ModelInferResponse:
    """The response to ``msg``: one raw_output_contents entry per output, in result order."""
    response = pb.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=msg.id)
    outputs = response.outputs
    raw = response.raw_output_contents
    output_specs = spec.output_map
    for name, array in result.outputs.items():
        datatype = output_specs[name].datatype
        outputs.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(serialize_bytes(array) if datatype == "BYTES" else array.tobytes())
    return response


def stream_error_response(msg: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A stream's answer to a failed request: ``error_message``, and the request's id."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            model_name=msg.model_name, model_version=msg.model_version, id=msg.id
        ),
    )


class GrpcCodec:
    """ModelInferRequest in, ModelInferResponse out (the data plane's Codec for gRPC)."""

    __slots__ = ()
    decode = staticmethod(decode_infer_request)
    encode = staticmethod(encode_infer_response)


GRPC_CODEC = GrpcCodec()
