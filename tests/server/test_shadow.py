"""Shadow traffic (``batchwire.shadow``) through a real server: the caller gets the primary's
answer only, the shadow runs the same requests, and the comparisons on /metrics match
values computed by hand from the two versions' known outputs."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from dataplane_testkit import chain_stages, x_request, y_of
from testsupport import free_port, labels, metric_samples, wait_until, write_python_model

from batchwire.protos import grpc_service_pb2_grpc as pb_grpc

#: Two versions: v1 answers SCORES = [x, 0, 1] and Y = X + 1; v2 answers SCORES =
#: [0, x, 1] and Y = X + 2, or raises for X = -1. So |Y1 - Y2| = 1 always, and the top
#: class differs exactly when x > 1 (x is the top of v1's scores, and of none of v2's).
SOURCE = """
import numpy as np


class BatchwireModel:
    def load(self, spec, device, instance_index):
        self.version = int(spec.version)

    def execute(self, inputs):
        x = inputs["X"]
        if self.version == 2 and bool((x == -1).any()):
            raise ValueError("the shadow version fails on -1")
        zeros, ones = np.zeros_like(x), np.ones_like(x)
        if self.version == 1:
            scores = np.concatenate([x, zeros, ones], axis=1)
        else:
            scores = np.concatenate([zeros, x, ones], axis=1)
        return {"Y": x + self.version, "SCORES": scores}
"""


def config(percent: str, tolerance: str = "0.5") -> str:
    return f"""
name: "shadowed"
backend: "python"
max_batch_size: 8
version_policy: {{ all: {{}} }}
input {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }}
output {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}
output {{ name: "SCORES" data_type: TYPE_FP32 dims: [ 3 ] }}
parameters {{ key: "batchwire.traffic" value: {{ string_value: "1:100,2:0" }} }}
parameters {{ key: "batchwire.shadow" value: {{ string_value: "2:{percent}" }} }}
parameters {{ key: "batchwire.shadow_tolerance" value: {{ string_value: "{tolerance}" }} }}
"""


@pytest.fixture()
def shadowed(tmp_path: Path, serve):
    root = tmp_path / "models"
    for version in (1, 2):
        write_python_model(root, "shadowed", config("100"), SOURCE, version)
    return serve(root, metrics_port=free_port())


def test_the_caller_gets_the_primary_and_the_comparisons_match_by_hand(shadowed) -> None:
    xs = [0.5, 2.0, 3.0, -1.0, 0.0, 5.0]  # top class flips for 2, 3, 5; -1 fails on v2
    with grpc.insecure_channel(shadowed.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for x in xs:
            request = x_request(x, model="shadowed")
            answer = stub.ModelInfer(request, timeout=30)
            assert answer.model_version == "1" and y_of(answer) == x + 1  # never the shadow's
    outcome = "batchwire_shadow_requests_total"
    wait_until(
        lambda: sum(metric_samples(shadowed.metrics_url, outcome).values()) == len(xs),
        "every shadow settled",
    )
    assert metric_samples(shadowed.metrics_url, outcome) == {
        labels(model="shadowed", shadow="2", outcome="compared"): 5,
        labels(model="shadowed", shadow="2", outcome="shadow_error"): 1,
    }
    y = labels(model="shadowed", primary="1", shadow="2", output="Y")
    scores = labels(model="shadowed", primary="1", shadow="2", output="SCORES")
    # |Y1 - Y2| = 1 > 0.5 for all 5 compared; SCORES differ by |x|: past 0.5 for 2, 3, 5.
    assert metric_samples(shadowed.metrics_url, "batchwire_shadow_out_of_tolerance_total") == {
        y: 5,
        scores: 3,
    }
    # Y has one column: no top class. SCORES' top class flips for x = 2, 3, 5.
    assert metric_samples(shadowed.metrics_url, "batchwire_shadow_argmax_flips_total") == {
        y: 0,
        scores: 3,
    }
    diffs = metric_samples(shadowed.metrics_url, "batchwire_shadow_max_abs_diff_sum")
    assert diffs[y] == pytest.approx(5.0)
    assert diffs[scores] == pytest.approx(0.5 + 2 + 3 + 0 + 5)
    buckets = metric_samples(shadowed.metrics_url, "batchwire_shadow_max_abs_diff_bucket")
    assert buckets[labels(**dict(y), le="1.0")] == 5
    assert buckets[labels(**dict(y), le="0.1")] == 0
    assert buckets[labels(**dict(scores), le="0.0")] == 1  # x = 0: identical
    assert buckets[labels(**dict(scores), le="+Inf")] == 5


def test_a_shadow_that_fails_or_lags_never_touches_the_primary(tmp_path: Path, serve) -> None:
    root = tmp_path / "models"
    slow = SOURCE.replace(
        "    def execute(self, inputs):\n",
        "    def execute(self, inputs):\n        import time\n"
        "        if self.version == 2:\n            time.sleep(0.05)\n",
    )
    for version in (1, 2):
        write_python_model(root, "shadowed", config("100"), slow, version)
    server = serve(root, metrics_port=free_port())
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [
            stub.ModelInfer.future(x_request(-1.0 if i % 2 else 1.0, model="shadowed"), timeout=30)
            for i in range(200)
        ]
        answers = [f.result() for f in futures]
    assert all(a.model_version == "1" for a in answers)
    outcome = "batchwire_shadow_requests_total"
    wait_until(
        lambda: sum(metric_samples(server.metrics_url, outcome).values()) == 200,
        "every shadow settled",
    )
    counts = metric_samples(server.metrics_url, outcome)
    dropped = counts.get(labels(model="shadowed", shadow="2", outcome="dropped"), 0)
    assert dropped > 0  # 200 at once against a 50 ms shadow: past the 64 in flight
    assert counts[labels(model="shadowed", shadow="2", outcome="shadow_error")] > 0


def test_a_request_naming_the_shadow_version_is_not_shadowed(shadowed) -> None:
    with grpc.insecure_channel(shadowed.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(x_request(1.0, model="shadowed", version="2"), timeout=30)
    assert answer.model_version == "2" and y_of(answer) == 3.0
    time.sleep(0.2)
    assert metric_samples(shadowed.metrics_url, "batchwire_shadow_requests_total") == {}


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("batchwire.shadow", "2", "'2' is not version:percent"),
        ("batchwire.shadow", "2:150", "'2:150' is not version:percent"),
        ("batchwire.shadow_tolerance", "-1", "'-1' is not a finite number >= 0"),
    ],
)
def test_bad_shadow_parameters_are_load_errors(tmp_path: Path, key, value, problem) -> None:
    from batchwire.server.repository import ModelRepository

    text = config("100").replace(
        f'key: "{key}" value: {{ string_value: "{"2:100" if key == "batchwire.shadow" else "0.5"}" }}',
        f'key: "{key}" value: {{ string_value: "{value}" }}',
    )
    write_python_model(tmp_path, "shadowed", text, SOURCE, 1)
    entry = ModelRepository(tmp_path).discover_model("shadowed")
    assert entry.error and f"parameters['{key}']" in entry.error and problem in entry.error


def test_no_shadow_stage_without_the_parameter(serve, versioned_repository: Path) -> None:
    from batchwire.server.shadow import ShadowStage
    from batchwire.server.traffic_split import TrafficSplitStage

    server = serve(versioned_repository)
    with grpc.insecure_channel(server.address) as channel:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(x_request(0.0), timeout=30)
    chain = server.server.dataplane.pipeline.chains["versioned"]
    kinds = {type(stage) for stage in chain_stages(chain)}
    assert not kinds & {ShadowStage, TrafficSplitStage}


def test_a_shadow_copy_never_writes_the_callers_shared_memory(tmp_path: Path, serve) -> None:
    import uuid

    import numpy as np
    import tritonclient.grpc as triton
    import tritonclient.utils.shared_memory as shm

    root = tmp_path / "models"
    for version in (1, 2):
        write_python_model(root, "shadowed", config("100"), SOURCE, version)
    server = serve(root, metrics_port=free_port(), allow_client_shm=True)
    client = triton.InferenceServerClient(server.address)
    name = f"bw-shadow-{uuid.uuid4().hex[:10]}"
    handle = shm.create_shared_memory_region(name, "/" + name, 4)
    shadows = "batchwire_shadow_requests_total"
    try:
        client.register_system_shared_memory(name, "/" + name, 4)
        for sent, x in enumerate((1.0, 2.0, 5.0), start=1):
            inp = triton.InferInput("X", [1, 1], "FP32")
            inp.set_data_from_numpy(np.array([[x]], np.float32))
            out = triton.InferRequestedOutput("Y")
            out.set_shared_memory(name, 4)
            result = client.infer("shadowed", [inp], outputs=[out])
            assert result.get_response().model_version == "1"
            # Let the shadow copy finish, then read: still version 1's answer (x + 1).
            wait_until(
                lambda s=sent: sum(metric_samples(server.metrics_url, shadows).values()) >= s,
                "the shadow copy settled",
            )
            got = shm.get_contents_as_numpy(handle, np.float32, [1, 1])
            assert float(got[0, 0]) == x + 1
    finally:
        client.unregister_system_shared_memory()
        client.close()
        shm.destroy_shared_memory_region(handle)


def test_a_shadow_copy_queues_at_the_lowest_priority_level() -> None:
    from types import SimpleNamespace

    from batchwire.core.spec import BatchingSpec, ModelSpec, TensorSpec
    from batchwire.server.codec import GRPC_CODEC
    from batchwire.server.inference_call import Caller, InferenceCall
    from batchwire.server.request_stages import Decode

    def spec(levels: int) -> ModelSpec:
        return ModelSpec(
            name="shadowed",
            version="2",
            platform="python",
            max_batch_size=8,
            inputs=(TensorSpec("X", "FP32", (1,)),),
            outputs=(TensorSpec("Y", "FP32", (1,)),),
            batching=BatchingSpec(
                priority_levels=levels, default_priority_level=1 if levels else 0
            ),
        )

    seen: list[int] = []
    decode = Decode(None, "shadowed")  # type: ignore[arg-type]
    decode.next = lambda call: seen.append(call.request.priority)  # type: ignore[assignment,func-returns-value]
    for levels in (3, 0):
        original = InferenceCall(
            x_request(1.0, model="shadowed"),
            GRPC_CODEC,
            Caller("ModelInfer", lambda: None),
            "shadowed",
        )
        for call in (original, original.copy(version="2")):
            call.served = SimpleNamespace(spec=spec(levels))  # type: ignore[assignment]
            decode(call)
    # The caller's request keeps its own (default) priority; the copy goes last, when
    # the model has levels to go last in.
    assert seen == [0, 3, 0, 0]
