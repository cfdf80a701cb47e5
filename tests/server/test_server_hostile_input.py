"""Hostile requests: every field and parameter is checked for type and range.

Each case sends one malformed ModelInferRequest, built field by field through the raw
gRPC stubs, to the shared example-model server (``mlp``: FP32 [-1,64] -> FP32 [-1,10],
no priority levels) and asserts the status and that the message names the field,
what was expected and what arrived. Checks already covered by test_server_errors.py
(unknown datatype, raw count, raw and typed contents together, byte sizes) are not
repeated here.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.codec import MAX_DIMS, MAX_ELEMENTS, MAX_ID_LENGTH, MAX_NAME_LENGTH

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED


@pytest.fixture(scope="module")
def stub(server_address: str) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def mlp_request(batch: int = 1) -> pb.ModelInferRequest:
    """A valid request for ``mlp``: one FP32 [batch, 64] input, raw."""
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[batch, 64])
    request.raw_input_contents.append(np.ones((batch, 64), np.float32).tobytes())
    return request


def refused(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    return err.value


def assert_refused(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    code: grpc.StatusCode,
    *fragments: str,
) -> None:
    error = refused(stub, request)
    assert error.code() == code, error.details()
    for fragment in fragments:
        assert fragment in error.details(), error.details()


def assert_served(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> None:
    response = stub.ModelInfer(request)
    assert [list(out.shape) for out in response.outputs] == [[1, 10]]


def with_parameter(
    request: pb.ModelInferRequest, key: str, kind: str, value: object
) -> pb.ModelInferRequest:
    setattr(request.parameters[key], kind, value)
    return request


# -- request parameters: type and range --------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind", "value", "got"),
    [
        ("priority", "string_param", "high", "got string_param 'high'"),
        ("priority", "int64_param", -1, "got int64_param -1"),
        ("priority", "double_param", 1.5, "got double_param 1.5"),
        ("priority", "bool_param", True, "got bool_param True"),
        ("timeout", "int64_param", -5, "got int64_param -5"),
        ("timeout", "string_param", "1s", "got string_param '1s'"),
        ("timeout", "double_param", 0.5, "got double_param 0.5"),
    ],
    ids=[
        "priority-string",
        "priority-negative",
        "priority-double",
        "priority-bool",
        "timeout-negative",
        "timeout-string",
        "timeout-double",
    ],
)
def test_integer_parameters_of_the_wrong_type_or_range(
    stub: pb_grpc.GRPCInferenceServiceStub, key: str, kind: str, value: object, got: str
) -> None:
    assert_refused(
        stub,
        with_parameter(mlp_request(), key, kind, value),
        INVALID,
        f"model 'mlp': request parameter '{key}' must be int64_param >= 0 or uint64_param",
        got,
    )


def test_priority_and_timeout_in_range_are_accepted(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # mlp has no priority levels: any priority is ignored, as Triton does.
    assert_served(stub, with_parameter(mlp_request(), "priority", "uint64_param", 2**64 - 1))
    assert_served(stub, with_parameter(mlp_request(), "priority", "int64_param", 3))
    assert_served(stub, with_parameter(mlp_request(), "timeout", "int64_param", 10**9))
    assert_served(stub, with_parameter(mlp_request(), "timeout", "uint64_param", 0))


def test_a_huge_string_parameter_is_quoted_short(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    error = refused(stub, with_parameter(mlp_request(), "priority", "string_param", "9" * 100_000))
    assert error.code() == INVALID
    assert "got string_param '999" in error.details()
    assert len(error.details()) < 300


@pytest.mark.parametrize(
    ("key", "kind", "value", "expected", "got"),
    [
        (
            "sequence_id",
            "double_param",
            2.0,
            "int64_param, uint64_param or string_param",
            "double_param 2.0",
        ),
        ("sequence_id", "bool_param", True, "int64_param, uint64_param or string_param", "bool"),
        ("sequence_start", "int64_param", 1, "bool_param", "int64_param 1"),
        ("sequence_end", "string_param", "yes", "bool_param", "string_param 'yes'"),
    ],
    ids=["id-double", "id-bool", "start-int", "end-string"],
)
def test_sequence_parameters_of_the_wrong_type(
    stub: pb_grpc.GRPCInferenceServiceStub,
    key: str,
    kind: str,
    value: object,
    expected: str,
    got: str,
) -> None:
    assert_refused(
        stub,
        with_parameter(mlp_request(), key, kind, value),
        INVALID,
        f"request parameter '{key}' must be {expected}, got {got}",
    )


@pytest.mark.parametrize(
    ("key", "kind", "value"),
    [
        ("sequence_id", "int64_param", 7),
        ("sequence_id", "uint64_param", 7),
        ("sequence_id", "string_param", "session-1"),
        ("sequence_start", "bool_param", True),
        ("sequence_end", "bool_param", True),
    ],
)
def test_a_sequence_is_unimplemented(
    stub: pb_grpc.GRPCInferenceServiceStub, key: str, kind: str, value: object
) -> None:
    assert_refused(
        stub,
        with_parameter(mlp_request(), key, kind, value),
        UNIMPLEMENTED,
        f"sequence batching (parameter '{key}') is not supported",
    )


def test_sequence_parameters_that_ask_for_no_sequence_are_accepted(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    request = with_parameter(mlp_request(), "sequence_id", "int64_param", 0)
    with_parameter(request, "sequence_start", "bool_param", False)
    with_parameter(request, "sequence_end", "bool_param", False)
    assert_served(stub, request)
    assert_served(stub, with_parameter(mlp_request(), "sequence_id", "string_param", ""))


def test_triton_prefix_is_reserved(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert_refused(
        stub,
        with_parameter(mlp_request(), "triton_shiny", "bool_param", True),
        INVALID,
        "request parameter 'triton_shiny' is reserved",
        "accepted: triton_enable_empty_final_response",
    )
    assert_refused(
        stub,
        with_parameter(mlp_request(), "triton_enable_empty_final_response", "int64_param", 1),
        INVALID,
        "'triton_enable_empty_final_response' must be bool_param, got int64_param 1",
    )
    assert_served(
        stub,
        with_parameter(mlp_request(), "triton_enable_empty_final_response", "bool_param", True),
    )


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("bool_param", True),
        ("int64_param", -3),
        ("string_param", "x" * 5000),
        ("double_param", float("nan")),
        ("uint64_param", 2**64 - 1),
    ],
)
def test_custom_parameters_of_any_type_are_passed_over(
    stub: pb_grpc.GRPCInferenceServiceStub, kind: str, value: object
) -> None:
    assert_served(stub, with_parameter(mlp_request(), "my_custom_parameter", kind, value))


# -- ids and names ------------------------------------------------------------------------


def test_request_id_length_is_bounded(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.id = "i" * (MAX_ID_LENGTH + 1)
    assert_refused(
        stub,
        request,
        INVALID,
        f"request id has {MAX_ID_LENGTH + 1} characters, expected at most {MAX_ID_LENGTH}",
    )
    request.id = "i" * MAX_ID_LENGTH
    assert stub.ModelInfer(request).id == request.id


def test_input_and_output_name_lengths_are_bounded(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    long_name = "N" * (MAX_NAME_LENGTH + 1)
    request = mlp_request()
    request.inputs[0].name = long_name
    assert_refused(
        stub,
        request,
        INVALID,
        "input name 'NNN",
        f"has {MAX_NAME_LENGTH + 1} characters, expected at most {MAX_NAME_LENGTH}",
    )
    request = mlp_request()
    request.outputs.add(name=long_name)
    error = refused(stub, request)
    assert error.code() == INVALID
    assert "output name 'NNN" in error.details()
    assert len(error.details()) < 300


def test_duplicate_input_names(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    assert_refused(stub, request, INVALID, "input 'INPUT__0' is given twice")


def test_duplicate_requested_output_names(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.outputs.add(name="OUTPUT__0")
    request.outputs.add(name="OUTPUT__0")
    assert_refused(stub, request, INVALID, "output 'OUTPUT__0' is requested twice")


def test_empty_names(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.inputs[0].name = ""
    assert_refused(stub, request, INVALID, "has no input ''", "expected inputs: INPUT__0")
    request = mlp_request()
    request.outputs.add(name="")
    assert_refused(stub, request, INVALID, "has no output ''", "expected outputs: OUTPUT__0")


# -- shapes and data ----------------------------------------------------------------------


def test_too_many_dimensions(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.inputs[0].shape[:] = [1] * (MAX_DIMS + 1)
    request.raw_input_contents[0] = b"\0" * 4
    assert_refused(
        stub,
        request,
        INVALID,
        f"input 'INPUT__0': shape has {MAX_DIMS + 1} dimensions, expected at most {MAX_DIMS}",
    )


def test_negative_dimension(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.inputs[0].shape[:] = [-1, 64]
    assert_refused(stub, request, INVALID, "shape dimensions must be >= 0, got [-1, 64]")


@pytest.mark.parametrize(
    "shape",
    [[2**62, 2**62], [2**63 - 1, 2], [0, 2**62], [2**40, 0, 2**40]],
    ids=["overflows-int64", "overflows-bytes", "empty-but-huge", "empty-between-huge"],
)
def test_absurd_shapes(stub: pb_grpc.GRPCInferenceServiceStub, shape: list[int]) -> None:
    request = mlp_request()
    request.inputs[0].shape[:] = shape
    request.raw_input_contents[0] = b""
    assert_refused(
        stub,
        request,
        INVALID,
        f"input 'INPUT__0': shape {shape} has too many elements",
        f"expected at most {MAX_ELEMENTS}",
    )


def test_bytes_shape_larger_than_its_buffer_is_refused_before_allocating(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # A billion elements would take 8 GB of object slots if allocated first.
    request = mlp_request()
    request.inputs[0].datatype = "BYTES"
    request.inputs[0].shape[:] = [1, 10**9]
    request.raw_input_contents[0] = b"\0" * 12
    assert_refused(
        stub,
        request,
        INVALID,
        "shape [1, 1000000000] has 1000000000 BYTES elements, expected at most 3",
        "12 raw bytes",
    )


def test_typed_contents_in_another_field(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    tensor.contents.int_contents.extend([1] * 64)
    assert_refused(
        stub,
        request,
        INVALID,
        "input 'INPUT__0': expected FP32 values in contents.fp32_contents, "
        "got contents.int_contents",
    )


@pytest.mark.parametrize(
    ("datatype", "field", "value", "bounds"),
    [
        ("INT8", "int_contents", 300, "-128..127"),
        ("INT16", "int_contents", -40000, "-32768..32767"),
        ("UINT8", "uint_contents", 256, "0..255"),
        ("UINT16", "uint_contents", 70000, "0..65535"),
    ],
)
def test_typed_contents_out_of_the_datatype_range(
    stub: pb_grpc.GRPCInferenceServiceStub, datatype: str, field: str, value: int, bounds: str
) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="INPUT__0", datatype=datatype, shape=[1, 3])
    getattr(tensor.contents, field).extend([1, value, 2])
    assert_refused(
        stub,
        request,
        INVALID,
        f"{datatype} values in contents.{field} must be within {bounds}, got {value}",
    )


def test_an_overlong_datatype_is_quoted_short(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.inputs[0].datatype = "F" * 100_000
    error = refused(stub, request)
    assert error.code() == INVALID
    assert "unknown datatype 'FFF" in error.details()
    assert len(error.details()) < 400


# -- tensor parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind", "value", "expected", "got"),
    [
        ("shared_memory_region", "int64_param", 4, "string_param", "int64_param 4"),
        (
            "shared_memory_offset",
            "int64_param",
            -1,
            "int64_param >= 0 or uint64_param",
            "int64_param -1",
        ),
        (
            "shared_memory_byte_size",
            "string_param",
            "256",
            "int64_param >= 0 or uint64_param",
            "string_param '256'",
        ),
    ],
    ids=["region-int", "offset-negative", "size-string"],
)
def test_input_shared_memory_parameters_of_the_wrong_type(
    stub: pb_grpc.GRPCInferenceServiceStub,
    key: str,
    kind: str,
    value: object,
    expected: str,
    got: str,
) -> None:
    # No raw contents: the message a shared-memory client sends.
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    setattr(tensor.parameters[key], kind, value)
    assert_refused(
        stub,
        request,
        INVALID,
        f"model 'mlp' input 'INPUT__0': parameter '{key}' must be {expected}, got {got}",
    )


def test_shared_memory_is_unimplemented_while_client_shm_is_off(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # Triton's default (--allow-client-shm=false) and its answer; tests/server/
    # test_shared_memory.py has shared memory on.
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    tensor.parameters["shared_memory_region"].string_param = "region0"
    tensor.parameters["shared_memory_byte_size"].int64_param = 256
    disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm=true'"
    assert_refused(stub, request, UNIMPLEMENTED, disabled)
    request = mlp_request()
    output = request.outputs.add(name="OUTPUT__0")
    output.parameters["shared_memory_region"].string_param = "r"
    output.parameters["shared_memory_byte_size"].int64_param = 40
    assert_refused(stub, request, UNIMPLEMENTED, disabled)


@pytest.mark.parametrize(
    ("kind", "value", "got"),
    [
        ("string_param", "3", "string_param '3'"),
        ("uint64_param", 3, "uint64_param 3"),
        ("int64_param", 0, "int64_param 0"),
        ("int64_param", -2, "int64_param -2"),
    ],
    ids=["string", "uint64", "zero", "negative"],
)
def test_classification_of_the_wrong_type_or_range(
    stub: pb_grpc.GRPCInferenceServiceStub, kind: str, value: object, got: str
) -> None:
    request = mlp_request()
    setattr(request.outputs.add(name="OUTPUT__0").parameters["classification"], kind, value)
    assert_refused(
        stub,
        request,
        INVALID,
        f"output 'OUTPUT__0': parameter 'classification' must be int64_param >= 1, got {got}",
    )


def test_classification_is_unimplemented(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.outputs.add(name="OUTPUT__0").parameters["classification"].int64_param = 3
    assert_refused(stub, request, UNIMPLEMENTED, "the classification extension is not supported")


def test_other_tensor_parameters_are_passed_over(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = mlp_request()
    request.inputs[0].parameters["binary_data_size"].int64_param = 256
    request.outputs.add(name="OUTPUT__0").parameters["binary_data"].bool_param = True
    assert_served(stub, request)


def test_input_parameters_are_passed_over_when_the_data_is_raw(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    # The data is in the message: no input parameter changes what it means.
    request = mlp_request()
    request.inputs[0].parameters["shared_memory_region"].int64_param = 1
    assert_served(stub, request)


# -- streams and afterwards ---------------------------------------------------------------


def test_a_stream_answers_hostile_requests_and_goes_on(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    bad = with_parameter(mlp_request(), "priority", "int64_param", -1)
    bad.id = "bad"
    good = mlp_request()
    good.id = "good"
    answers = list(stub.ModelStreamInfer(iter([bad, good])))
    assert [a.infer_response.id for a in answers] == ["bad", "good"]
    assert "request parameter 'priority' must be int64_param >= 0" in answers[0].error_message
    assert answers[1].error_message == ""
    assert list(answers[1].infer_response.outputs[0].shape) == [1, 10]


def test_the_server_still_serves(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert_served(stub, mlp_request())
