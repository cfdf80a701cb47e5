"""The data plane without gRPC: what a second front end would call, and what it gets back.

Every test drives a :class:`DataPlane` over a real registry of the two-version
``versioned`` model; inference goes through a dict codec standing in for another
protocol (a KServe v2 REST endpoint would decode JSON the same way).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchwire import __version__
from batchwire.core.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedError,
)
from batchwire.core.metadata import ModelMetadata, RepositoryEntry, TensorMetadata
from batchwire.core.spec import ModelSpec
from batchwire.core.types import InferenceRequest, InferenceResult
from batchwire.server.dataplane import (
    BASE_EXTENSIONS,
    DataPlane,
    InvalidSettingError,
    ModelLoadFailedError,
)
from batchwire.server.inference_call import Caller, InferenceCall
from batchwire.server.registry import ModelRegistry
from batchwire.server.repository import ModelRepository
from batchwire.telemetry import Telemetry


class DictCodec:
    """A front end whose messages are dicts: {"id": str, "inputs": {name: ndarray}}."""

    @staticmethod
    def decode(
        message: dict, spec: ModelSpec, deadline: float | None
    ) -> tuple[InferenceRequest, dict[str, str]]:
        inputs = message["inputs"]
        request = InferenceRequest(inputs=inputs, id=message["id"], deadline=deadline)
        return request, {name: "FP32" for name in inputs}

    @staticmethod
    def encode(message: dict, spec: ModelSpec, result: InferenceResult) -> dict:
        return {"id": message["id"], "version": spec.version, "outputs": result.outputs}


def infer_call(x: float, *, model: str = "versioned", version: str = "") -> InferenceCall:
    message = {"id": f"x={x}", "inputs": {"X": np.array([[x]], np.float32)}}
    return InferenceCall(message, DictCodec(), Caller("Infer", lambda: None), model, version)


@pytest.fixture
async def registry(versioned_repository: Path) -> AsyncIterator[ModelRegistry]:
    registry = ModelRegistry(ModelRepository(versioned_repository))
    await registry.load_all()
    yield registry
    await registry.close()


@pytest.fixture
async def telemetry() -> AsyncIterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.close()


async def test_a_second_front_end_infers_through_the_same_pipeline(registry: ModelRegistry) -> None:
    plane = DataPlane(registry)
    response: Any = await plane.infer(infer_call(1.5))
    assert (response["id"], response["version"]) == ("x=1.5", "2")
    np.testing.assert_array_equal(response["outputs"]["Y"], [[3.5]])
    response = await plane.infer(infer_call(1.5, version="1"))
    np.testing.assert_array_equal(response["outputs"]["Y"], [[2.5]])
    with pytest.raises(ModelNotFoundError, match="model 'nope' is not in the model repository"):
        await plane.infer(infer_call(1.0, model="nope"))
    wrong = infer_call(1.0)
    wrong.message["inputs"] = {"X": np.zeros((1, 3), np.float32)}
    with pytest.raises(InvalidInputError, match=r"expected shape \[-1,1\], got \[1,3\]"):
        await plane.infer(wrong)


async def test_readiness_follows_the_models_and_the_server(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, model_control_mode="explicit")
    assert plane.server_live() and plane.server_ready()
    assert plane.model_ready("versioned") and plane.model_ready("versioned", "1")
    assert not plane.model_ready("versioned", "3") and not plane.model_ready("nope")
    await plane.unload_model("versioned")
    assert not plane.model_ready("versioned") and plane.server_ready()  # unloaded on request
    await plane.load_model("versioned")
    assert plane.model_ready("versioned")
    plane.accepting = False  # the server is stopping
    assert not plane.server_ready() and not plane.model_ready("versioned")


async def test_metadata_is_protocol_neutral(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, server_name="edge")
    server = plane.server_metadata()
    assert (server.name, server.version, server.extensions) == (
        "edge",
        __version__,
        BASE_EXTENSIONS,
    )
    assert plane.model_metadata("versioned", "1") == ModelMetadata(
        name="versioned",
        versions=("1", "2"),
        platform="python",
        inputs=(TensorMetadata("X", "FP32", (-1, 1)),),
        outputs=(TensorMetadata("Y", "FP32", (-1, 1)),),
    )
    assert plane.model_config("versioned").max_batch_size == 8
    with pytest.raises(
        ModelNotFoundError, match=r"has no version '7' \(available versions: 1, 2\)"
    ):
        plane.model_metadata("versioned", "7")
    assert plane.repository_index() == [
        RepositoryEntry("versioned", "1", "READY", ""),
        RepositoryEntry("versioned", "2", "READY", ""),
    ]


async def test_repository_control_reports_why_it_refuses(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, model_control_mode="explicit")
    with pytest.raises(InvalidSettingError) as err:
        await plane.load_model("versioned", {"bogus": True})
    assert err.value.message == (
        "Unrecognized load parameter 'bogus' with type 'BOOL' "
        "(expected 'config' (string) and 'file:<version>/<path>' (bytes))"
    )
    with pytest.raises(ModelLoadFailedError, match=r"failed to load 'missing': .*model folder"):
        await plane.load_model("missing")
    with pytest.raises(ModelNotFoundError, match="model 'nope' is not in the model repository"):
        await plane.unload_model("nope")
    assert [e.state for e in plane.repository_index(ready_only=True)] == ["READY", "READY"]
    # A folder that does not exist is refused before the registry hears of it (as Triton).
    assert "missing" not in [e.name for e in plane.repository_index()]
    assert plane.server_ready()


async def test_without_telemetry_observability_is_unsupported(registry: ModelRegistry) -> None:
    plane = DataPlane(registry)
    assert "statistics" not in plane.server_metadata().extensions
    calls = [
        (plane.statistics, "ModelStatistics; statistics are not collected"),
        (plane.trace_settings, "TraceSetting; tracing is not available"),
        (plane.log_settings, "LogSettings; set the level with --log-level"),
    ]
    for method, text in calls:
        with pytest.raises(UnsupportedError) as err:
            method()
        assert err.value.message == f"batchwire does not implement {text}"


async def test_statistics_and_settings_with_telemetry(
    versioned_repository: Path, telemetry: Telemetry
) -> None:
    registry = ModelRegistry(
        ModelRepository(versioned_repository), observer_factory=telemetry.observer_factory
    )
    await registry.load_all()
    try:
        plane = DataPlane(registry, telemetry=telemetry)
        assert plane.server_metadata().extensions[-3:] == ("statistics", "trace", "logging")
        await plane.infer(infer_call(1.0, version="1"))
        bad = infer_call(1.0)
        bad.message["inputs"] = {}
        with pytest.raises(InvalidInputError, match="input 'X' is missing"):
            await plane.infer(bad)
        rows = {row["version"]: row for row in plane.statistics("versioned")}
        assert rows["1"]["inference_stats"]["success"]["count"] == 1
        # A request refused by validation is counted against the version that refused it.
        assert rows["2"]["inference_stats"]["fail"]["count"] == 1
        assert [r["name"] for r in plane.statistics()] == ["versioned", "versioned"]
        with pytest.raises(ModelNotFoundError):
            plane.statistics("nope")
        assert plane.trace_settings("versioned")["trace_level"] == ["OFF"]
        updated = plane.trace_settings("versioned", {"trace_rate": ["4"]})
        assert updated["trace_rate"] == ["4"]
        with pytest.raises(InvalidSettingError, match="unknown trace setting 'bogus'"):
            plane.trace_settings("", {"bogus": ["1"]})
        with pytest.raises(ModelNotFoundError):
            plane.trace_settings("nope", {"trace_rate": ["4"]})
        assert plane.log_settings()["log_format"] == "default"
        with pytest.raises(InvalidSettingError, match="log setting 'log_info' must be a bool"):
            plane.log_settings({"log_info": 3})
    finally:
        await registry.close()


async def test_a_model_without_configuration_has_no_metadata(registry: ModelRegistry) -> None:
    plane = DataPlane(registry)
    served = registry.find("versioned", "1")
    served.config = None  # as for a version whose config.pbtxt could not be read
    with pytest.raises(ModelNotReadyError, match="model 'versioned' has no readable configuration"):
        plane.model_metadata("versioned", "1")
