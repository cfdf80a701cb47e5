"""Hypothesis strategies for ModelInferRequest messages, well-formed and not.

:func:`echo_requests` draws requests the echo model takes. :func:`infer_requests`
draws those a third of the time, and otherwise messages for the ``echo`` model of
``testsupport.echo_model_config`` (one optional input IN_<type> and output OUT_<type>
per v2 datatype, dims [-1], max_batch_size 8) that hit every check of the decode and
validation paths: names from the model, empty, unknown or overlong; datatypes from
the v2 list and garbage; shapes with negative, zero, huge and too many dimensions;
raw contents sized right (so that some requests succeed), wrong or missing, or a
count other than the inputs'; typed contents in any field with values over the whole
range of that field; request and tensor parameters of every oneof kind under the
names the server reads and others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from testsupport import ALL_DATATYPES

from batchwire.core.datatypes import WIRE_DTYPES, serialize_bytes
from batchwire.protos import grpc_service_pb2 as pb

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)

#: A few of each: valid names, near misses, garbage, the empty name, an overlong one.
INPUT_NAMES = st.one_of(
    st.sampled_from([f"IN_{dt}" for dt in ALL_DATATYPES]),
    st.sampled_from(["", "IN_", "in_fp32", "OUT_FP32", "N" * 1025]),
    st.text(max_size=8),
)
OUTPUT_NAMES = st.one_of(
    st.sampled_from([f"OUT_{dt}" for dt in ALL_DATATYPES]),
    st.sampled_from(["", "IN_FP32", "O" * 1025]),
    st.text(max_size=8),
)
#: Three times in five a v2 datatype, so that later checks are reached.
DATATYPES = st.one_of(
    st.sampled_from(ALL_DATATYPES),
    st.sampled_from(ALL_DATATYPES),
    st.sampled_from(ALL_DATATYPES),
    st.sampled_from(["", "fp32", "TYPE_FP32", "FP8", "STRING", "INT128"]),
    st.text(max_size=6),
)
#: Mostly small dimensions (so that data can match), sometimes absurd ones.
DIMS = st.one_of(st.integers(0, 4), st.integers(-2, 9), INT64)
SHAPES = st.one_of(
    st.lists(st.integers(0, 4), min_size=1, max_size=3),
    st.lists(DIMS, max_size=5),
    st.lists(st.just(1), min_size=30, max_size=40),
)

#: Values of each InferTensorContents field, over the field's whole range.
CONTENTS_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": INT64,
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": UINT64,
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}

PARAMETER_VALUES = st.one_of(
    st.booleans().map(lambda v: pb.InferParameter(bool_param=v)),
    st.one_of(st.integers(-3, 3), INT64).map(lambda v: pb.InferParameter(int64_param=v)),
    st.text(max_size=8).map(lambda v: pb.InferParameter(string_param=v)),
    st.floats().map(lambda v: pb.InferParameter(double_param=v)),
    st.one_of(st.integers(0, 3), UINT64).map(lambda v: pb.InferParameter(uint64_param=v)),
    st.just(pb.InferParameter()),
)
REQUEST_PARAMETER_KEYS = st.sampled_from(
    [
        "priority",
        "timeout",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "triton_enable_empty_final_response",
        "triton_other",
        "binary_data_output",
        "custom",
    ]
)
TENSOR_PARAMETER_KEYS = st.sampled_from(
    [
        "shared_memory_region",
        "shared_memory_offset",
        "shared_memory_byte_size",
        "classification",
        "binary_data",
        "binary_data_size",
        "custom",
    ]
)


def matching_raw(datatype: str, count: int, draw: st.DrawFn) -> bytes:
    """Raw bytes that fit ``count`` elements of ``datatype``."""
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=4), min_size=count, max_size=count))
        return serialize_bytes(np.array(items, dtype=np.object_))
    size = count * WIRE_DTYPES[datatype].itemsize
    return draw(st.binary(min_size=size, max_size=size))


def _count(shape: list[int]) -> int | None:
    """Elements of ``shape`` when it is small enough to fill with data, else None."""
    if any(d < 0 for d in shape):
        return None
    count = int(np.prod(shape, dtype=object)) if shape else 1
    return count if count <= 32 else None


def _parameters(draw: st.DrawFn, target: Any, keys: st.SearchStrategy[str]) -> None:
    """Up to three of ``keys`` in ``target.parameters``, each of any oneof kind."""
    for key in draw(st.lists(keys, max_size=3, unique=True)):
        target.parameters[key].CopyFrom(draw(PARAMETER_VALUES))


@st.composite
def echo_requests(
    draw: st.DrawFn, model_names: tuple[str, ...] = ("echo",)
) -> pb.ModelInferRequest:
    """A request the echo model takes: 1 to 3 inputs of one batch size, outputs to match,
    and sometimes a priority or a timeout (the echo model has no priority levels)."""
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(model_names)), id=draw(st.text(max_size=8))
    )
    batch = draw(st.integers(1, 8))
    datatypes = draw(st.lists(st.sampled_from(ALL_DATATYPES), min_size=1, max_size=3, unique=True))
    for datatype in datatypes:
        shape = [batch, draw(st.integers(0, 3))]
        request.inputs.add(name=f"IN_{datatype}", datatype=datatype, shape=shape)
        request.raw_input_contents.append(matching_raw(datatype, shape[0] * shape[1], draw))
    for datatype in draw(st.lists(st.sampled_from(datatypes), max_size=2, unique=True)):
        request.outputs.add(name=f"OUT_{datatype}")
    if draw(st.booleans()):
        request.parameters["priority"].uint64_param = draw(st.integers(0, 3))
        request.parameters["timeout"].int64_param = draw(st.integers(0, 10**9))
    return request


@st.composite
def infer_requests(
    draw: st.DrawFn, model_names: tuple[str, ...] = ("echo",)
) -> pb.ModelInferRequest:
    """A ModelInferRequest, well-formed or not (see the module docstring)."""
    if draw(st.integers(0, 2)) == 0:
        request = draw(echo_requests(model_names))
        if draw(st.booleans()):
            # One parameter more, of any kind: the request may still be valid.
            _parameters(draw, request, REQUEST_PARAMETER_KEYS)
        return request
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(model_names)),
        # Now and then an overlong id; otherwise short ones, so that other checks are reached.
        id="i" * 1025 if draw(st.integers(0, 19)) == 0 else draw(st.text(max_size=8)),
    )
    # How the data travels: raw for every input (the common case), typed contents,
    # a raw count that does not match, or nothing at all.
    mode = draw(st.sampled_from(["raw", "raw", "raw", "typed", "wrong-raw-count", "none"]))
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(DATATYPES)
        shape = draw(SHAPES)
        # Half the time the name fits the datatype, as a request the model takes would.
        coherent = datatype in WIRE_DTYPES and draw(st.booleans())
        name = f"IN_{datatype}" if coherent else draw(INPUT_NAMES)
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        count = _count(shape)
        if mode == "raw":
            if datatype in WIRE_DTYPES and count is not None and draw(st.booleans()):
                request.raw_input_contents.append(matching_raw(datatype, count, draw))
            else:
                request.raw_input_contents.append(draw(st.binary(max_size=40)))
        elif mode == "typed":
            field = draw(st.sampled_from(sorted(CONTENTS_VALUES)))
            size = count if count is not None and draw(st.booleans()) else draw(st.integers(0, 5))
            values = draw(st.lists(CONTENTS_VALUES[field], min_size=size, max_size=size))
            getattr(tensor.contents, field).extend(values)
            if draw(st.integers(0, 9)) == 0:
                request.raw_input_contents.append(b"")
        if draw(st.integers(0, 4)) == 0:
            _parameters(draw, tensor, TENSOR_PARAMETER_KEYS)
    if mode == "wrong-raw-count":
        for _ in range(draw(st.integers(1, 3))):
            request.raw_input_contents.append(draw(st.binary(max_size=8)))
    for _ in range(draw(st.integers(0, 3))):
        output = request.outputs.add(name=draw(OUTPUT_NAMES))
        if draw(st.integers(0, 4)) == 0:
            _parameters(draw, output, TENSOR_PARAMETER_KEYS)
    if draw(st.booleans()):
        _parameters(draw, request, REQUEST_PARAMETER_KEYS)
    return request
