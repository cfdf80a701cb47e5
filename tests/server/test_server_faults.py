"""Faulty models and malformed calls, served for real: each gets a clear status and
the server keeps serving.

- a model returning an output its config does not declare: INTERNAL naming it;
- a 20 KB model name: NOT_FOUND with the message shortened (not RESOURCE_EXHAUSTED
  because the status trailer outgrew the client's metadata limit);
- bytes that are not a protobuf message: INVALID_ARGUMENT naming the message type
  and protobuf's error (not UNKNOWN), for ModelInfer and in a stream;
- a model whose batch hangs past ``batchwire.hang_timeout_ms``: logged, counted in
  ``batchwire_hung_instances``, ModelReady false and health NOT_SERVING for it, new
  requests UNAVAILABLE naming the hang, other models served; ready again once the
  batch returns, and the stuck request answered.
"""

from __future__ import annotations

import logging
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from testsupport import free_port, start_server, wait_until, write_python_model

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos import health_pb2, health_pb2_grpc
from batchwire.server.app import ServerThread
from batchwire.server.status import MESSAGE_LIMIT

PYTHON_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input {{ name: "X" data_type: TYPE_FP32 dims: [ 3 ] }}
output {{ name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }}
"""

PYTHON_SOURCE = """
class BatchwireModel:
    def execute(self, inputs):
        x = inputs["X"]
        return {body}
"""

SCRIPT_CONFIG = """
name: "script_extra"
platform: "pytorch_libtorch"
max_batch_size: 8
input { name: "X" data_type: TYPE_FP32 dims: [ 3 ] }
output { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }
"""


#: Blocks in execute() while its gate file exists (the test creates and removes it).
STUCK_CONFIG = """
name: "stuck"
backend: "python"
max_batch_size: 8
input { name: "X" data_type: TYPE_FP32 dims: [ 3 ] }
output { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] }
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { }
parameters { key: "batchwire.hang_timeout_ms" value: { string_value: "200" } }
parameters { key: "batchwire.inline_below_us" value: { string_value: "0" } }
"""

STUCK_SOURCE = """
import os
import time

GATE = {gate!r}


class BatchwireModel:
    def execute(self, inputs):
        while os.path.exists(GATE):
            time.sleep(0.01)
        return {{"OUT": inputs["X"] * 2}}
"""


class ExtraOutput(torch.nn.Module):
    """Returns the declared OUT and an undeclared DEBUG."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"OUT": x + 1, "DEBUG": x}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("faults")
    for name, body in {
        "good": '{"OUT": x * 2}',
        "python_extra": '{"OUT": x, "DEBUG": x, "SCRATCH": x}',
    }.items():
        write_python_model(
            root, name, PYTHON_CONFIG.format(name=name), PYTHON_SOURCE.format(body=body)
        )
    (root / "script_extra" / "1").mkdir(parents=True)
    (root / "script_extra" / "config.pbtxt").write_text(SCRIPT_CONFIG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(ExtraOutput()).save(str(root / "script_extra" / "1" / "model.pt"))
    write_python_model(root, "stuck", STUCK_CONFIG, STUCK_SOURCE.format(gate=str(root / "gate")))
    srv = start_server(root, metrics_port=free_port())
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


X = np.arange(6, dtype=np.float32).reshape(2, 3)


def x_request(model: str, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="X", datatype="FP32", shape=list(X.shape))
    request.raw_input_contents.append(X.tobytes())
    return request


def assert_serving(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    response = stub.ModelInfer(x_request("good"))
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(X.shape)
    np.testing.assert_array_equal(out, X * 2)


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    return caught.value


# -- undeclared outputs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        (
            "python_extra",
            "execute() returned output(s) DEBUG, SCRATCH that the config does not declare "
            "(declared: OUT)",
        ),
        (
            "script_extra",
            "the model returned output(s) DEBUG that the config does not declare (declared: OUT)",
        ),
    ],
)
def test_undeclared_output_is_internal_naming_it(stub, model: str, fragment: str) -> None:
    error = rpc_error(stub.ModelInfer, x_request(model))
    assert error.code() == grpc.StatusCode.INTERNAL, error.details()
    assert fragment in error.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name=model)).ready  # the model stays loaded
    assert_serving(stub)


# -- long messages -----------------------------------------------------------------


def test_huge_model_name_is_not_found_with_a_shortened_message(stub) -> None:
    name = "m" * 20_000
    error = rpc_error(stub.ModelInfer, x_request(name))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    details = error.details()
    assert details.startswith("model 'mmm")
    assert len(details) < MESSAGE_LIMIT + 100
    cut = int(details.rsplit("[", 1)[1].split(" ", 1)[0])
    assert details.endswith(f"... [{cut} characters cut]")
    assert len(details) - len(f"... [{cut} characters cut]") + cut > 20_000  # nothing lost silently
    assert_serving(stub)


def test_huge_non_ascii_model_name_fits_the_status_trailer(stub) -> None:
    # Each of these characters is 3 UTF-8 bytes, 9 once percent-encoded in the trailer.
    error = rpc_error(stub.ModelMetadata, pb.ModelMetadataRequest(name="\u20ac" * 5_000))
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert "characters cut]" in error.details()
    assert "\u20ac" in error.details()


def test_huge_model_name_in_a_stream_is_answered_in_stream_shortened(stub) -> None:
    responses = list(
        stub.ModelStreamInfer(iter([x_request("n" * 20_000, "long"), x_request("good", "ok")]))
    )
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {"long", "ok"}
    assert "characters cut]" in by_id["long"].error_message
    assert len(by_id["long"].error_message) < MESSAGE_LIMIT + 100
    assert by_id["ok"].error_message == ""


# -- bytes that do not decode --------------------------------------------------------

#: A string field (1: model_name) holding invalid UTF-8, and plain garbage.
INVALID_UTF8 = b"\x0a\x02\xff\xfe"
GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"


@pytest.mark.parametrize("payload", [INVALID_UTF8, GARBAGE], ids=["invalid-utf8", "garbage"])
def test_undecodable_infer_request_is_invalid_argument(channel, stub, payload: bytes) -> None:
    raw = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=None,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    error = rpc_error(raw, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "not a valid inference.ModelInferRequest protobuf message" in error.details()
    assert "DecodeError" in error.details()
    assert_serving(stub)


def test_undecodable_request_to_another_rpc_is_invalid_argument(channel) -> None:
    raw = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelMetadata",
        request_serializer=None,
        response_deserializer=pb.ModelMetadataResponse.FromString,
    )
    error = rpc_error(raw, INVALID_UTF8)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "inference.ModelMetadataRequest" in error.details()


@pytest.mark.parametrize(
    ("method", "response_type"),
    [
        ("/grpc.health.v1.Health/Check", "HealthCheckResponse"),
        ("/grpc.health.v1.Health/List", "HealthListResponse"),
    ],
)
def test_undecodable_health_request_is_invalid_argument(channel, method, response_type) -> None:
    from batchwire.protos import health_pb2

    raw = channel.unary_unary(
        method,
        request_serializer=None,
        response_deserializer=getattr(health_pb2, response_type).FromString,
    )
    error = rpc_error(raw, GARBAGE)  # List's request has no fields: only a bad tag fails
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "not a valid grpc.health.v1." in error.details()


def test_undecodable_health_watch_is_invalid_argument(channel) -> None:
    from batchwire.protos import health_pb2

    raw = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=None,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(raw(INVALID_UTF8, timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "grpc.health.v1.HealthCheckRequest" in caught.value.details()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_undecodable_reflection_message_is_answered_in_stream(channel, version) -> None:
    from batchwire.protos import reflection_v1_pb2, reflection_v1alpha_pb2

    messages = reflection_v1_pb2 if version == "v1" else reflection_v1alpha_pb2
    raw = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=None,
        response_deserializer=messages.ServerReflectionResponse.FromString,
    )
    listing = messages.ServerReflectionRequest(list_services="").SerializeToString()
    first, second = list(raw(iter([GARBAGE, listing]), timeout=10))
    assert first.error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "ServerReflectionRequest protobuf message" in first.error_response.error_message
    names = {s.name for s in second.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


def test_undecodable_stream_message_is_answered_in_stream(channel) -> None:
    raw = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=None,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    good = x_request("good", "after").SerializeToString()
    responses = list(raw(iter([GARBAGE, good])))
    assert len(responses) == 2
    errors = [r for r in responses if r.error_message]
    assert len(errors) == 1
    assert "not a valid inference.ModelInferRequest protobuf message" in errors[0].error_message
    (answer,) = [r for r in responses if not r.error_message]
    assert answer.infer_response.id == "after"
    out = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(out.reshape(X.shape), X * 2)


# -- a hung model --------------------------------------------------------------------


def hung_gauge(server: ServerThread) -> str:
    assert server.metrics_url is not None
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith('batchwire_hung_instances{model="stuck",version="1"}')
    ]
    assert len(lines) == 1, text
    return lines[0].rsplit(" ", 1)[1]


def test_hung_model_is_reported_and_refused_until_its_batch_returns(
    server: ServerThread, channel, stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="batchwire.batching.batcher")
    health = health_pb2_grpc.HealthStub(channel)

    def model_health() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service="stuck"), timeout=10).status

    assert hung_gauge(server) == "0"
    gate = server.server.settings.model_repository / "gate"
    gate.touch()
    try:
        stuck = stub.ModelInfer.future(x_request("stuck", "stuck-1"))
        # Sent before the hang is seen, with a deadline: answered at its deadline.
        late = stub.ModelInfer.future(x_request("stuck", "late"), timeout=1.0)
        wait_until(
            lambda: not stub.ModelReady(pb.ModelReadyRequest(name="stuck")).ready,
            "the hung model reported not ready",
        )
        assert model_health() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert hung_gauge(server) == "1"
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # the other models serve
        hung_logs = [r.getMessage() for r in caplog.records if "hung" in r.getMessage()]
        assert any(
            "model 'stuck' version '1': instance 0 (cpu) has been running a batch" in m
            for m in hung_logs
        ), hung_logs

        error = rpc_error(stub.ModelInfer, x_request("stuck"))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "instance(s) are hung" in error.details()
        assert "batchwire.hang_timeout_ms=200 ms" in error.details()
        assert_serving(stub)
        assert late.exception(timeout=30).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not stuck.done()
    finally:
        gate.unlink(missing_ok=True)
    response = stuck.result(timeout=30)
    assert response.id == "stuck-1"
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(X.shape)
    np.testing.assert_array_equal(out, X * 2)
    wait_until(
        lambda: stub.ModelReady(pb.ModelReadyRequest(name="stuck")).ready,
        "the model ready again once its batch returned",
    )
    assert model_health() == health_pb2.HealthCheckResponse.SERVING
    assert hung_gauge(server) == "0"
    assert stub.ModelInfer(x_request("stuck")).raw_output_contents
