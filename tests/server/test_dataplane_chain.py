"""How the pipeline builds its chains: in order, once per model, without unconfigured stages."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from dataplane_testkit import chain_stages, x_request, y_of

from batchwire.core.errors import ModelNotFoundError
from batchwire.core.types import InferenceResult, RequestTimings
from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.inference_call import Caller, InferenceCall
from batchwire.server.pipeline import Pipeline, Stage, spawn
from batchwire.server.request_stages import CountRejections, Decode, Resolve, Submit, Validate
from batchwire.server.shared_memory_stage import SharedMemory
from batchwire.server.stages import STAGES


class Mark(Stage):
    """Writes ``in:<name>`` on the way in and ``out:<name>`` on the way out."""

    __slots__ = ("name", "trail")

    def __init__(self, name: str, trail: list[str]) -> None:
        super().__init__()
        self.name = name
        self.trail = trail

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        self.trail.append(f"in:{self.name}")
        result = await self.next(call)
        self.trail.append(f"out:{self.name}")
        return result


class Answer(Stage):
    """Ends a chain: answers every call with an empty result."""

    __slots__ = ("trail",)

    def __init__(self, trail: list[str]) -> None:
        super().__init__()
        self.trail = trail

    async def __call__(self, call: InferenceCall) -> InferenceResult:
        self.trail.append("answer")
        return InferenceResult({}, RequestTimings())


def fake_plane(*known: str) -> SimpleNamespace:
    """As much of a DataPlane as a Pipeline reads: which model names the registry holds."""
    return SimpleNamespace(registry=SimpleNamespace(versions=lambda m: ["1"] if m in known else []))


def call_for(model: str) -> InferenceCall:
    return InferenceCall(None, None, Caller("test", lambda: None), model)  # type: ignore[arg-type]


async def test_a_request_passes_the_stages_in_order_and_its_result_comes_back_in_reverse() -> None:
    trail: list[str] = []
    pipeline = Pipeline(
        fake_plane("m"),  # type: ignore[arg-type]
        [
            lambda plane, model: Mark("a", trail),
            lambda plane, model: None,  # not configured: absent from the chain
            lambda plane, model: Mark("b", trail),
            lambda plane, model: Answer(trail),
        ],
    )
    chain = pipeline.chain("m")
    assert [type(s).__name__ for s in chain_stages(chain)] == ["Mark", "Mark", "Answer"]
    await chain(call_for("m"))
    assert trail == ["in:a", "in:b", "answer", "out:b", "out:a"]


async def test_chains_are_kept_per_known_model_and_shared_by_unknown_names() -> None:
    built: list[str | None] = []

    def answer(plane: object, model: str | None) -> Stage:
        built.append(model)
        return Answer([])

    pipeline = Pipeline(fake_plane("a", "b"), [answer])  # type: ignore[arg-type]
    for name in ("a", "b", "a", "x", "y", "a", "x"):
        await pipeline.chain(name)(call_for(name))
    assert built == ["a", "b", None]
    assert pipeline.chain("x") is pipeline.chain("y")
    pipeline.forget("a")
    pipeline.chain("a")
    assert built == ["a", "b", None, "a"]


async def test_a_chain_whose_last_stage_passes_the_call_on_fails_loudly() -> None:
    pipeline = Pipeline(fake_plane("m"), [lambda plane, model: Stage()])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="the pipeline for model 'm' ends without a stage"):
        await pipeline.chain("m")(call_for("m"))
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline(fake_plane(), [])  # type: ignore[arg-type]


async def test_a_spawned_copy_fails_alone_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def missing(call: InferenceCall) -> Awaitable[InferenceResult]:
        raise ModelNotFoundError(f"model '{call.model}' is not in the model repository")

    with caplog.at_level(logging.WARNING, logger="batchwire.server.pipeline"):
        task = spawn(missing, call_for("shadowed"), "shadow of 'm'")  # raises in the task only
        with pytest.raises(ModelNotFoundError):
            await task
    assert "shadow of 'm' failed: model 'shadowed' is not in the model repository" in caplog.text


#: The model of every Counted stage built, in order.
BUILT: list[str | None] = []


class Counted(Stage):
    """Counts the requests it passed on; its construction is recorded in BUILT."""

    __slots__ = ("passed",)

    def __init__(self, plane: object, model: str | None) -> None:
        super().__init__()
        BUILT.append(model)
        self.passed = 0

    def __call__(self, call: InferenceCall) -> Awaitable[InferenceResult]:
        self.passed += 1
        return self.next(call)


def test_a_server_builds_each_chain_once_and_again_after_a_reload(
    serve, versioned_repository: Path
) -> None:
    BUILT.clear()
    server = serve(
        versioned_repository, (Counted, *STAGES), model_control_mode="explicit", load_models=("*",)
    )
    plane = server.server.dataplane
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(10):
            assert (
                y_of(stub.ModelInfer(x_request(float(i), version=str(1 + i % 2)))) == i + 1 + i % 2
            )
        for name in ("nope-a", "nope-b"):
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(x_request(0.0, model=name))
        # One chain for the model (both versions), one shared by every unknown name.
        assert BUILT == ["versioned", None]
        first = plane.pipeline.chains["versioned"]
        assert first.passed == 10
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="versioned"))
        stub.ModelInfer(x_request(0.0))
    assert BUILT == ["versioned", None, "versioned"]
    assert plane.pipeline.chains["versioned"] is not first


def test_the_default_chain_of_a_server(serve, versioned_repository: Path) -> None:
    server = serve(versioned_repository)
    with grpc.insecure_channel(server.address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(x_request(0.0))
    chain = server.server.dataplane.pipeline.chains["versioned"]
    assert [type(s) for s in chain_stages(chain)] == [
        Resolve,
        CountRejections,
        Decode,
        SharedMemory,
        Validate,
        Submit,
    ]
