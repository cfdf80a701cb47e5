"""Health, metadata, config and repository RPCs through a real server."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as triton

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos import health_pb2, health_pb2_grpc
from batchwire.protos import reflection_v1_pb2 as reflection_pb2
from batchwire.protos import reflection_v1_pb2_grpc as reflection_pb2_grpc

EXAMPLES = ("cnn", "mlp", "null", "text")


@pytest.fixture(scope="module")
def stub(server_address: str):
    with grpc.insecure_channel(server_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def tclient(server_address: str):
    client = triton.InferenceServerClient(server_address)
    yield client
    client.close()


def test_live_and_ready(stub, tclient) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert tclient.is_server_live() and tclient.is_server_ready()
    for name in EXAMPLES:
        assert tclient.is_model_ready(name)
    assert not tclient.is_model_ready("no-such-model")
    assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="99")).ready


def test_server_metadata_is_honest(tclient) -> None:
    meta = tclient.get_server_metadata()
    assert meta.name == "batchwire"
    assert meta.version
    assert "model_repository" in meta.extensions
    # Shared memory is not implemented, so it must not be advertised.
    assert not any("shared_memory" in ext for ext in meta.extensions)


def test_model_metadata_has_batch_dimension(tclient) -> None:
    mlp = tclient.get_model_metadata("mlp")
    assert mlp.name == "mlp" and list(mlp.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.inputs] == [
        ("INPUT__0", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in mlp.outputs] == [
        ("OUTPUT__0", "FP32", [-1, 10])
    ]
    text = tclient.get_model_metadata("text")
    assert [(t.name, t.datatype, list(t.shape)) for t in text.inputs] == [
        ("TOKENS", "INT64", [-1, -1])
    ]
    cnn = tclient.get_model_metadata("cnn", "1")
    assert list(cnn.inputs[0].shape) == [-1, 3, 64, 64]


def test_model_config_round_trips_through_tritonclient(tclient) -> None:
    config = tclient.get_model_config("mlp").config
    assert config.name == "mlp"
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    assert config.input[0].name == "INPUT__0" and list(config.input[0].dims) == [64]


def test_metadata_errors(stub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelConfig(pb.ModelConfigRequest(name="mlp", version="7"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "version '7'" in err.value.details() and "available versions: 1" in err.value.details()


def test_repository_index_lists_every_example(tclient) -> None:
    index = tclient.get_model_repository_index()
    rows = {(m.name, m.version, m.state) for m in index.models}
    assert rows == {(name, "1", "READY") for name in EXAMPLES}


def test_health_service_reports_server_and_models(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
        assert health.Check(health_pb2.HealthCheckRequest(service="mlp")).status == serving
        assert (
            health.Check(
                health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
            ).status
            == serving
        )
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
        ]
        listed, described, health = list(stub.ServerReflectionInfo(iter(requests)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto
    assert health.file_descriptor_response.file_descriptor_proto
