"""The rollback gate (``batchwire.rollback``) through a real server: a canary that fails, or a
shadow that disagrees, takes the split back to the stable version until the next load."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton
from dataplane_testkit import x_request, y_of
from testsupport import free_port, metric_samples, wait_until, write_python_model

from batchwire.protos import grpc_service_pb2_grpc as pb_grpc
from batchwire.server.rollback import parse_rollback

#: v1: Y = X + 1. v2: Y = X + 2, and it raises for X < 0 (a canary that fails on some inputs).
SOURCE = """
class BatchwireModel:
    def load(self, spec, device, instance_index):
        self.version = int(spec.version)

    def execute(self, inputs):
        x = inputs["X"]
        if self.version == 2 and bool((x < 0).any()):
            raise ValueError("the canary fails on negative inputs")
        return {"Y": x + self.version}
"""


def config(parameters: dict[str, str]) -> str:
    lines = [
        'name: "canary"',
        'backend: "python"',
        "max_batch_size: 8",
        "version_policy: { all: {} }",
        'input { name: "X" data_type: TYPE_FP32 dims: [ 1 ] }',
        'output { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }',
    ]
    for key, value in parameters.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def serve_canary(tmp_path: Path, serve, parameters: dict[str, str]):
    root = tmp_path / "models"
    for version in (1, 2):
        write_python_model(root, "canary", config(parameters), SOURCE, version)
    return serve(root, model_control_mode="explicit", load_models=("*",), metrics_port=free_port())


def test_a_failing_canary_is_rolled_back_until_the_next_load(tmp_path, serve, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="batchwire.server.rollback")
    server = serve_canary(
        tmp_path,
        serve,
        {"batchwire.traffic": "1:50,2:50", "batchwire.rollback": "error_ratio>0.3 over 20"},
    )
    outcomes: list[tuple[str, str]] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        x = -1.0  # every canary answer fails: the gate fires at its 20th
        for _ in range(300):
            try:
                answer = stub.ModelInfer(x_request(x, model="canary"), timeout=30)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INTERNAL, exc.details()
                outcomes.append(("INTERNAL", "2"))
            else:
                assert y_of(answer) == x + int(answer.model_version)
                outcomes.append(("OK", answer.model_version))
    failures = [i for i, (code, _) in enumerate(outcomes) if code != "OK"]
    # The gate fired at the 20th canary answer, and from then on version 1 answered all.
    assert len(failures) == 20, failures
    assert all(outcome == ("OK", "1") for outcome in outcomes[failures[-1] + 1 :])
    model = (("model", "canary"),)
    assert metric_samples(server.metrics_url, "batchwire_rollback_active") == {model: 1}
    assert metric_samples(server.metrics_url, "batchwire_rollbacks_total") == {
        (("model", "canary"), ("rule", "error_ratio")): 1
    }
    routed = metric_samples(server.metrics_url, "batchwire_routed_requests_total")
    assert routed[(("model", "canary"), ("route", "rollback"), ("version", "1"))] > 100
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "model 'canary': rolled back to its stable version: error_ratio" in m for m in messages
    )

    # An operator's load ends the rollback: the canary takes traffic again.
    client = triton.InferenceServerClient(server.address)
    try:
        client.load_model("canary")
    finally:
        client.close()
    assert (
        metric_samples(server.metrics_url, "batchwire_rollback_active") == {}
    )  # the gate went with the load
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        versions = {
            stub.ModelInfer(x_request(1.0, model="canary"), timeout=30).model_version
            for _ in range(60)
        }
    assert versions == {"1", "2"}
    assert metric_samples(server.metrics_url, "batchwire_rollback_active") == {
        model: 0
    }  # a fresh gate


def test_a_disagreeing_shadow_rolls_the_split_back_and_stops(tmp_path, serve) -> None:
    server = serve_canary(
        tmp_path,
        serve,
        {
            "batchwire.traffic": "1:50,2:50",
            "batchwire.shadow": "2:100",
            "batchwire.shadow_tolerance": "0.5",
            "batchwire.rollback": "disagreement>0.5 over 10",
        },
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(40):  # |Y1 - Y2| = 1 > 0.5: every comparison disagrees
            stub.ModelInfer(x_request(1.0, model="canary", version="1"), timeout=30)
        wait_until(
            lambda: (
                metric_samples(server.metrics_url, "batchwire_rollback_active")
                == {(("model", "canary"),): 1}
            ),
            "the disagreement rule fired",
        )
        compared = metric_samples(server.metrics_url, "batchwire_shadow_requests_total")
        answers = {
            stub.ModelInfer(x_request(1.0, model="canary"), timeout=30).model_version
            for _ in range(40)
        }
    assert answers == {"1"}  # version 2 is out of the split
    assert (
        metric_samples(server.metrics_url, "batchwire_shadow_requests_total") == compared
    )  # no more copies
    assert metric_samples(server.metrics_url, "batchwire_rollbacks_total") == {
        (("model", "canary"), ("rule", "disagreement")): 1
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("error_ratio>0.05", "is not a rule"),
        ("latency>0.1 over 10", "is not a rule"),
        ("error_ratio>1.5 over 10", "threshold must be in 0..1"),
        ("error_ratio>0.1 over 0", "window >= 1"),
        ("error_ratio>0.1 over 5; error_ratio>0.2 over 9", "given twice"),
    ],
)
def test_bad_rules_are_load_errors(tmp_path: Path, text: str, problem: str) -> None:
    from batchwire.server.repository import ModelRepository

    write_python_model(
        tmp_path, "canary", config({"batchwire.traffic": "1:1", "batchwire.rollback": text}), SOURCE
    )
    entry = ModelRepository(tmp_path).discover_model("canary")
    assert entry.error and "parameters['batchwire.rollback']" in entry.error
    assert problem in entry.error
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_rollback(text)
