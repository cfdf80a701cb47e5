"""Encoding and decoding of client tensors, request building and error parsing (no server)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from client_samples import sample
from testsupport import ALL_DATATYPES

from batchwire.clients import InferenceServerError, InferInput, bf16_to_float32, float_to_bf16
from batchwire.clients._calls import (
    InferResult,
    build_infer_request,
    channel_options,
    from_parameters,
    normalize_address,
    to_parameter,
)
from batchwire.clients.tensors import (
    decode_contents,
    decode_outputs,
    decode_tensor,
    encode_contents,
    encode_input,
    to_wire_array,
)
from batchwire.core.datatypes import NUMPY_DTYPES
from batchwire.protos import grpc_service_pb2 as pb


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
@pytest.mark.parametrize("shape", [(2, 3), (5,), (), (0, 4)])
def test_raw_round_trip_every_datatype(datatype: str, shape: tuple[int, ...]) -> None:
    array = sample(datatype, shape)
    tensor, raw = encode_input("x", array, datatype)
    assert tensor.name == "x"
    assert tensor.datatype == datatype
    assert list(tensor.shape) == list(shape)
    decoded = decode_tensor(tensor.datatype, tensor.shape, raw)
    assert decoded.shape == shape
    if datatype == "BYTES":
        assert decoded.dtype == object
        assert decoded.tolist() == array.tolist()
    else:
        assert decoded.dtype == NUMPY_DTYPES[datatype]
        np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_typed_contents_round_trip_every_datatype(datatype: str) -> None:
    array = sample(datatype, (3, 2))
    if datatype == "FP64":
        array[0, 0] = 1e300  # must not pass through float32
    contents = encode_contents(array, datatype)
    decoded = decode_contents(datatype, [3, 2], contents)
    assert decoded.shape == (3, 2)
    if datatype == "BYTES":
        assert decoded.tolist() == array.tolist()
    else:
        assert decoded.dtype == NUMPY_DTYPES[datatype]
        np.testing.assert_array_equal(decoded, array)


def test_inferred_datatypes() -> None:
    cases = {
        "BOOL": np.array([True]),
        "UINT8": np.array([1], np.uint8),
        "UINT16": np.array([1], np.uint16),
        "INT64": np.array([1]),
        "FP16": np.array([1], np.float16),
        "FP32": np.array([1], np.float32),
        "FP64": np.array([1.0]),
        "BYTES": np.array(["a"]),
    }
    for datatype, array in cases.items():
        assert encode_input("x", array)[0].datatype == datatype
    assert encode_input("x", np.array([b"a"]))[0].datatype == "BYTES"
    assert encode_input("x", [[1.5, 2.5]])[0].datatype == "FP64"


def test_raw_bytes_are_little_endian_row_major() -> None:
    big = np.array([[1, 2], [3, 4]], dtype=">i4")
    _, raw = encode_input("x", big)
    assert raw == np.array([[1, 2], [3, 4]], dtype="<i4").tobytes()
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not C-contiguous
    tensor, raw = encode_input("x", transposed)
    assert list(tensor.shape) == [3, 2]
    np.testing.assert_array_equal(decode_tensor("FP32", [3, 2], raw), transposed)


def test_bytes_wire_format_and_str_inputs() -> None:
    tensor, raw = encode_input("s", np.array([["ab", "\u00e9"]]))
    assert tensor.datatype == "BYTES"
    assert list(tensor.shape) == [1, 2]
    assert raw == b"\x02\x00\x00\x00ab\x02\x00\x00\x00\xc3\xa9"
    decoded = decode_tensor("BYTES", [1, 2], raw)
    assert decoded.tolist() == [[b"ab", "\u00e9".encode()]]


def test_explicit_datatype_converts_within_kind() -> None:
    tensor, raw = encode_input("x", np.array([1.5, 2.25], np.float64), "FP16")
    assert tensor.datatype == "FP16"
    np.testing.assert_array_equal(
        decode_tensor("FP16", [2], raw), np.array([1.5, 2.25], np.float16)
    )
    tensor, raw = encode_input("x", [1, 2, 3], "INT32")
    assert len(raw) == 12
    with pytest.raises(ValueError, match="cannot send a float64 array as INT64"):
        encode_input("x", np.array([1.5]), "INT64")
    with pytest.raises(ValueError, match="BYTES tensors need"):
        encode_input("x", np.array([1, 2]), "BYTES")
    with pytest.raises(ValueError, match="unknown datatype"):
        encode_input("x", np.array([1, 2]), "FP8")


def test_bf16_rounding_matches_torch() -> None:
    values = np.array(
        [
            0.0,
            -0.0,
            1.0,
            1.00390625,
            1.01171875,
            3.14159,
            -2.5e-3,
            1e38,
            3.4e38,
            -1e-40,
            np.inf,
            -np.inf,
            65504.0,
            1.0 + 2**-8,
            1.0 + 3 * 2**-8,
        ],
        dtype=np.float32,
    )
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(float_to_bf16(values).view(np.int16), expected)
    np.testing.assert_array_equal(
        bf16_to_float32(float_to_bf16(values)),
        torch.from_numpy(values).to(torch.bfloat16).float().numpy(),
    )
    nan = float_to_bf16(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bf16_to_float32(nan)).all()
    scalar = float_to_bf16(np.float32(np.nan))
    assert isinstance(scalar, np.ndarray) and scalar.shape == ()
    assert np.isnan(bf16_to_float32(scalar))
    assert bf16_to_float32(float_to_bf16(2.0)).shape == ()


def test_bf16_from_floats_or_bits() -> None:
    floats = np.array([1.0, -2.0, 0.5], np.float32)
    tensor, raw = encode_input("x", floats, "BF16")
    bits = decode_tensor("BF16", tensor.shape, raw)
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(bf16_to_float32(bits), floats)
    _, raw_from_bits = encode_input("x", bits, "BF16")
    assert raw_from_bits == raw
    with pytest.raises(ValueError, match="BF16"):
        to_wire_array(np.array(["a"]), "BF16")


def test_decoded_arrays_are_zero_copy_views() -> None:
    raw = np.arange(12, dtype=np.float32).tobytes()
    array = decode_tensor("FP32", [3, 4], raw)
    assert not array.flags.writeable
    assert np.shares_memory(array, np.frombuffer(raw, np.uint8))


def test_decode_rejects_malformed_data() -> None:
    with pytest.raises(ValueError, match="needs 24 bytes, got 20"):
        decode_tensor("FP32", [2, 3], b"\x00" * 20)
    with pytest.raises(ValueError, match="BYTES"):
        decode_tensor("BYTES", [2], b"\x01\x00\x00\x00a")
    with pytest.raises(ValueError, match="negative"):
        decode_tensor("FP32", [-1, 3], b"")
    with pytest.raises(ValueError, match="needs 4 elements"):
        decode_contents("INT32", [4], pb.InferTensorContents(int_contents=[1, 2]))


def make_response() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="m", model_version="3", id="req-1")
    response.parameters["sequence_end"].bool_param = True
    for name, array in {"a": np.ones((2, 2), np.float32), "b": np.array([b"x"], object)}.items():
        tensor, raw = encode_input(name, array)
        response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(raw)
    return response


def test_infer_result_from_raw_response() -> None:
    result = InferResult.from_response(make_response())
    assert (result.model_name, result.model_version, result.id) == ("m", "3", "req-1")
    assert result.parameters == {"sequence_end": True}
    assert result.datatypes == {"a": "FP32", "b": "BYTES"}
    np.testing.assert_array_equal(result.as_numpy("a"), np.ones((2, 2)))
    assert result.as_numpy("b").tolist() == [b"x"]
    with pytest.raises(KeyError, match="no output 'c'"):
        result.as_numpy("c")


def test_decode_outputs_typed_and_mismatched() -> None:
    response = pb.ModelInferResponse()
    out = response.outputs.add(name="y", datatype="INT64", shape=[2])
    out.contents.int64_contents.extend([5, -7])
    np.testing.assert_array_equal(decode_outputs(response)["y"], [5, -7])
    bad = make_response()
    del bad.raw_output_contents[1]
    with pytest.raises(ValueError, match="2 outputs but 1 raw_output_contents"):
        decode_outputs(bad)


def test_build_infer_request_inputs_parameters() -> None:
    request = build_infer_request(
        "mlp",
        [
            InferInput("a", np.zeros((1, 2), np.float32)),
            ("b", np.array([1.0, 2.0], np.float32), "BF16"),
            ("c", [1, 2]),
        ],
        outputs=["y"],
        version="2",
        request_id="r",
        priority=3,
        timeout_us=1500,
        parameters={"flag": True, "n": 7, "big": 2**64 - 1, "x": 0.5, "s": "v"},
        datatypes={"c": "INT32", "b": "FP32"},  # an InferInput's own datatype wins
    )
    assert (request.model_name, request.model_version, request.id) == ("mlp", "2", "r")
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("a", "FP32", [1, 2]),
        ("b", "BF16", [2]),
        ("c", "INT32", [2]),
    ]
    assert len(request.raw_input_contents) == 3
    assert [o.name for o in request.outputs] == ["y"]
    assert request.parameters["priority"].WhichOneof("parameter_choice") == "int64_param"
    assert request.parameters["timeout"].int64_param == 1500
    assert from_parameters(request.parameters) == {
        "flag": True,
        "n": 7,
        "big": 2**64 - 1,
        "x": 0.5,
        "s": "v",
        "priority": 3,
        "timeout": 1500,
    }
    assert to_parameter(np.int32(4)).int64_param == 4
    with pytest.raises(TypeError):
        to_parameter([1])  # type: ignore[arg-type]  # a list is the wrong type tested
    with pytest.raises(TypeError):
        build_infer_request("m", np.zeros(3))


def test_address_and_channel_options() -> None:
    assert normalize_address("grpc://h:1/") == "h:1"
    assert normalize_address("127.0.0.1:8001") == "127.0.0.1:8001"
    options = dict(channel_options(100, [("grpc.max_send_message_length", 5), ("grpc.x", 1)]))
    assert options == {
        "grpc.max_send_message_length": 5,
        "grpc.max_receive_message_length": 100,
        "grpc.x": 1,
    }


def test_stream_error_messages_parse_status() -> None:
    error = InferenceServerError.from_stream_message("NOT_FOUND: no model 'x'", "7")
    assert error.status_code == grpc.StatusCode.NOT_FOUND
    assert error.message == "no model 'x'"
    assert error.request_id == "7"
    assert "request '7'" in str(error) and "NOT_FOUND" in str(error)
    error = InferenceServerError.from_stream_message("[UNAVAILABLE] queue full")
    assert (error.status_code, error.details) == (grpc.StatusCode.UNAVAILABLE, "queue full")
    error = InferenceServerError.from_stream_message("OOPS: shape mismatch")
    assert error.status_code == grpc.StatusCode.UNKNOWN
    assert error.message == "OOPS: shape mismatch"
