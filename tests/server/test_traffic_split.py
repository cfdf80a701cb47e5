"""Weighted traffic split between versions (``batchwire.traffic``), through a real server.

The ``versioned`` Python model answers Y = X + its version, so every answer says which
version computed it; ``model_version`` in the response must agree.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from dataplane_testkit import VERSIONED_CONFIG, VERSIONED_SOURCE, x_request, y_of
from testsupport import free_port, labels, metric_samples, write_python_model
from tritonclient.utils import InferenceServerException

from batchwire.protos import grpc_service_pb2 as pb
from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.traffic_split import parse_traffic


def split_config(traffic: str, name: str = "versioned") -> str:
    return (
        VERSIONED_CONFIG.replace('name: "versioned"', f'name: "{name}"')
        + f'parameters {{ key: "batchwire.traffic" value: {{ string_value: "{traffic}" }} }}\n'
    )


def make_repository(root: Path, traffic: str, versions=(1, 2)) -> Path:
    for version in versions:
        write_python_model(root, "versioned", split_config(traffic), VERSIONED_SOURCE, version)
    return root


def keyed(x: float, key: str | None = None, version: str = "") -> pb.ModelInferRequest:
    request = x_request(x, version=version)
    if key is not None:
        request.parameters["routing_key"].string_param = key
    return request


@pytest.fixture()
def split_server(tmp_path: Path, serve):
    root = make_repository(tmp_path / "models", "1:70,2:30")
    return serve(root, model_control_mode="explicit", load_models=("*",), metrics_port=free_port())


def test_requests_without_a_version_follow_the_weights(split_server) -> None:
    with grpc.insecure_channel(split_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [stub.ModelInfer(keyed(0.0), timeout=30) for _ in range(1500)]
    versions = Counter(a.model_version for a in answers)
    assert set(versions) == {"1", "2"}
    # The answer itself says which version computed it (Y = X + version).
    assert all(y_of(a) == float(a.model_version) for a in answers)
    # Binomial(1500, 0.3): SD 17.7; 5 SD either side.
    assert abs(versions["2"] - 450) < 5 * math.sqrt(1500 * 0.3 * 0.7), versions
    routed = metric_samples(split_server.metrics_url, "batchwire_routed_requests_total")
    assert routed[labels(model="versioned", route="split", version="2")] == versions["2"]
    weights = metric_samples(split_server.metrics_url, "batchwire_traffic_weight")
    assert weights == {
        labels(model="versioned", version="1"): 70.0,
        labels(model="versioned", version="2"): 30.0,
    }


def test_a_routing_key_always_lands_on_the_same_version(split_server) -> None:
    with grpc.insecure_channel(split_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        by_key = {}
        for index in range(300):
            key = f"user-{index}"
            seen = {stub.ModelInfer(keyed(0.0, key), timeout=30).model_version for _ in range(3)}
            assert len(seen) == 1, (key, seen)
            by_key[key] = seen.pop()
        again = {key: stub.ModelInfer(keyed(0.0, key), timeout=30).model_version for key in by_key}
    assert again == by_key
    shares = Counter(by_key.values())
    assert set(shares) == {"1", "2"}
    assert abs(shares["2"] - 90) < 5 * math.sqrt(300 * 0.3 * 0.7), shares


def test_a_named_version_is_served_as_named_and_counted_pinned(split_server) -> None:
    with grpc.insecure_channel(split_server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [stub.ModelInfer(keyed(1.0, "k", version="2"), timeout=30) for _ in range(20)]
        error = None
        request = keyed(1.0)
        request.parameters["routing_key"].int64_param = 7
        try:
            stub.ModelInfer(request, timeout=30)
        except grpc.RpcError as exc:
            error = exc
    assert {a.model_version for a in answers} == {"2"} and {y_of(a) for a in answers} == {3.0}
    routed = metric_samples(split_server.metrics_url, "batchwire_routed_requests_total")
    assert routed[labels(model="versioned", route="pinned", version="2")] == 20
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'routing_key' must be string_param, got int64_param 7" in error.details()


def test_changing_the_split_by_a_config_override_under_load_loses_nothing(split_server) -> None:
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def caller(aio) -> None:
        x = triton_aio.InferInput("X", [1, 1], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1), np.float32))
        while not stop.is_set():
            try:
                result = await aio.infer("versioned", [x])
            except InferenceServerException as exc:
                outcomes[f"error {exc.status()} {exc.message()}"] += 1
            else:
                outcomes[result.get_response().model_version] += 1

    async def run() -> Counter[str]:
        async with triton_aio.InferenceServerClient(split_server.address) as aio:
            callers = [asyncio.ensure_future(caller(aio)) for _ in range(6)]
            await asyncio.sleep(0.3)
            config = {
                "name": "versioned",
                "backend": "python",
                "max_batch_size": 8,
                "version_policy": {"all": {}},
                "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}],
                "parameters": {"batchwire.traffic": {"string_value": "1:0,2:100"}},
            }
            await aio.load_model("versioned", config=json.dumps(config))
            await asyncio.sleep(0.2)  # requests routed before the swap finish on version 1
            before = Counter(outcomes)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*callers)
            return before

    before = asyncio.run(run())
    errors = {k: v for k, v in outcomes.items() if k.startswith("error")}
    assert errors == {}
    after = outcomes - before
    assert after["1"] == 0 and after["2"] > 0, (before, after)
    client = triton.InferenceServerClient(split_server.address)
    try:
        config = client.get_model_config("versioned", as_json=True)["config"]
    finally:
        client.close()
    assert config["parameters"]["batchwire.traffic"]["string_value"] == "1:0,2:100"


def test_a_split_naming_a_version_that_is_not_served_uses_the_others(tmp_path, serve) -> None:
    root = make_repository(tmp_path / "models", "1:50,2:25,7:25")
    server = serve(root)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        versions = Counter(
            stub.ModelInfer(keyed(0.0), timeout=30).model_version for _ in range(300)
        )
    assert set(versions) == {"1", "2"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1:90,2", "'2' is not version:weight"),
        ("1:90,1:10", "version 1 is given twice"),
        ("0:100", "version 0 must be >= 1"),
        ("1:0,2:0", "gives every version weight 0"),
        ("a:1", "'a:1' is not version:weight"),
        ("1:-5", "'1:-5' is not version:weight"),
    ],
)
def test_a_bad_split_is_a_load_error_naming_the_parameter(tmp_path, text, problem) -> None:
    from batchwire.server.repository import ModelRepository

    root = make_repository(tmp_path / "models", text, versions=(1,))
    entry = ModelRepository(root).discover_model("versioned")
    assert entry.error and "parameters['batchwire.traffic']" in entry.error
    assert problem in entry.error
    with pytest.raises(ValueError) as caught:
        parse_traffic(text)
    assert str(caught.value) in entry.error
