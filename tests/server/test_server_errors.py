"""Bad requests get a clear gRPC status naming the problem; the server keeps serving."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(server_address: str):
    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def mlp_request(
    shape=(1, 64), datatype="FP32", raw: bytes | None = None, name="INPUT__0", **fields
):
    request = pb.ModelInferRequest(model_name=fields.pop("model_name", "mlp"), **fields)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is None:
        raw = np.zeros(shape, np.float32).tobytes()
    request.raw_input_contents.append(raw)
    return request


def assert_error(stub, request, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    assert err.value.code() == code, err.value.details()
    for fragment in fragments:
        assert fragment in err.value.details()


def test_unknown_model_and_version(stub) -> None:
    assert_error(stub, mlp_request(model_name="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope'")
    assert_error(
        stub,
        mlp_request(model_version="3"),
        grpc.StatusCode.NOT_FOUND,
        "no version '3'",
        "available versions: 1",
    )


@pytest.mark.parametrize(
    ("request_kwargs", "fragments"),
    [
        (
            {"datatype": "INT32", "raw": np.zeros((1, 64), np.int32).tobytes()},
            ["input 'INPUT__0'", "expected datatype FP32, got INT32"],
        ),
        ({"datatype": "FP99"}, ["unknown datatype 'FP99'"]),
        ({"shape": (1, 63)}, ["input 'INPUT__0'", "expected shape [-1,64], got [1,63]"]),
        (
            {"shape": (64,), "raw": np.zeros(64, np.float32).tobytes()},
            ["expected shape [-1,64], got [64]"],
        ),
        ({"raw": b"\0" * 255}, ["expected 256 bytes for FP32 shape [1, 64], got 255"]),
        ({"name": "WRONG"}, ["has no input 'WRONG'", "expected inputs: INPUT__0"]),
        ({"shape": (65, 64)}, ["batch size 65 exceeds max_batch_size 64"]),
    ],
    ids=[
        "datatype",
        "unknown-datatype",
        "shape",
        "missing-batch-dim",
        "byte-size",
        "unknown-input",
        "batch-too-big",
    ],
)
def test_invalid_argument(stub, request_kwargs, fragments) -> None:
    assert_error(stub, mlp_request(**request_kwargs), grpc.StatusCode.INVALID_ARGUMENT, *fragments)


def test_missing_input(stub) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    assert_error(
        stub,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'INPUT__0' is missing",
        "FP32 [-1,64]",
    )


def test_raw_and_typed_contents_together(stub) -> None:
    request = mlp_request()
    request.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    assert_error(
        stub, request, grpc.StatusCode.INVALID_ARGUMENT, "both in contents and raw_input_contents"
    )


def test_raw_count_mismatch(stub) -> None:
    request = mlp_request()
    request.raw_input_contents.append(b"extra")
    assert_error(
        stub,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "one raw_input_contents entry per input (1), got 2",
    )


def test_typed_contents_wrong_count(stub) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([1.0] * 3)
    assert_error(
        stub,
        request,
        grpc.StatusCode.INVALID_ARGUMENT,
        "expected 64 values in contents.fp32_contents",
        "got 3",
    )


def test_unknown_requested_output(stub) -> None:
    request = mlp_request()
    request.outputs.add(name="NOPE")
    assert_error(
        stub, request, grpc.StatusCode.INVALID_ARGUMENT, "has no output 'NOPE'", "OUTPUT__0"
    )


def test_sequence_requests_are_refused(stub) -> None:
    request = mlp_request()
    request.parameters["sequence_id"].int64_param = 5
    assert_error(stub, request, grpc.StatusCode.UNIMPLEMENTED, "sequence batching")


def test_server_still_answers_after_errors(stub) -> None:
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(mlp_request(shape=(1, 1), raw=b"\0" * 4))
    response = stub.ModelInfer(mlp_request())
    assert list(response.outputs[0].shape) == [1, 10]
