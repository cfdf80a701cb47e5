"""Every data-plane refusal reaches a gRPC caller as its status and message, verbatim.

Pins the statuses and messages the servicer reported before the data plane took over
model lookup, repository control and settings (they are the protocol's contract with
callers). Uses only gRPC, so it runs against any build of the server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from batchwire import __version__
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(serve, versioned_repository: Path) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    # A server of its own, in explicit mode: its tests load and unload models.
    server = serve(versioned_repository, model_control_mode="explicit", load_models=("*",))
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MISSING = "model 'nope' is not in the model repository"
NO_VERSION = "model 'versioned' has no version '7' (available versions: 1, 2)"


def test_metadata_and_config_of_unknown_models(stub) -> None:
    assert status_of(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))) == (
        NOT_FOUND,
        MISSING,
    )
    request = pb.ModelConfigRequest(name="versioned", version="7")
    assert status_of(lambda: stub.ModelConfig(request)) == (NOT_FOUND, NO_VERSION)
    assert not stub.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="versioned", version="1")).ready


def test_server_metadata_names_the_extensions(stub) -> None:
    meta = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (meta.name, meta.version) == ("batchwire", __version__)
    assert list(meta.extensions) == [
        "model_configuration",
        "model_repository",
        "schedule_policy",
        "parameters",
        "statistics",
        "trace",
        "logging",
    ]


def test_repository_control_refusals(stub) -> None:
    request = pb.RepositoryModelLoadRequest(model_name="versioned")
    request.parameters["bogus"].bool_param = True
    assert status_of(lambda: stub.RepositoryModelLoad(request)) == (
        INVALID,
        "Unrecognized load parameter 'bogus' with type 'BOOL' "
        "(expected 'config' (string) and 'file:<version>/<path>' (bytes))",
    )
    code, details = status_of(
        lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="missing"))
    )
    assert code == INVALID and details.startswith("failed to load 'missing': ")
    unload = pb.RepositoryModelUnloadRequest(model_name="nope")
    assert status_of(lambda: stub.RepositoryModelUnload(unload)) == (NOT_FOUND, MISSING)


def test_statistics_and_settings_refusals(stub) -> None:
    statistics = pb.ModelStatisticsRequest(name="versioned", version="7")
    assert status_of(lambda: stub.ModelStatistics(statistics)) == (NOT_FOUND, NO_VERSION)
    trace = pb.TraceSettingRequest(model_name="nope")
    assert status_of(lambda: stub.TraceSetting(trace)) == (NOT_FOUND, MISSING)
    trace = pb.TraceSettingRequest()
    trace.settings["bogus"].value.append("1")
    code, details = status_of(lambda: stub.TraceSetting(trace))
    assert code == INVALID and details.startswith("unknown trace setting 'bogus'")
    logs = pb.LogSettingsRequest()
    logs.settings["log_info"].uint32_param = 3
    assert status_of(lambda: stub.LogSettings(logs)) == (
        INVALID,
        "log setting 'log_info' must be a bool, got int",
    )


@pytest.mark.parametrize(
    "method",
    [
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
    ],
)
def test_shared_memory_changes_are_unimplemented_while_client_shm_is_off(stub, method) -> None:
    # Triton's default and message (--allow-client-shm=false); status reads still answer.
    request = getattr(pb, f"{method}Request")()
    assert status_of(lambda: getattr(stub, method)(request)) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "Client shared memory is disabled. Start the server with "
        "'--allow-client-shm=true' to enable.",
    )


@pytest.mark.parametrize("kind", ["System", "Cuda"])
def test_shared_memory_status_lists_nothing_while_client_shm_is_off(stub, kind: str) -> None:
    request = getattr(pb, f"{kind}SharedMemoryStatusRequest")()
    assert not getattr(stub, f"{kind}SharedMemoryStatus")(request, timeout=10).regions
    code, details = status_of(
        lambda: getattr(stub, f"{kind}SharedMemoryStatus")(
            getattr(pb, f"{kind}SharedMemoryStatusRequest")(name="r0"), timeout=10
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert "shared memory region: 'r0'" in details
