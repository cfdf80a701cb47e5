"""core.spec: what a valid model spec is, and that a built spec cannot change."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from batchwire.core.spec import (
    BatchingSpec,
    ExecutionSpec,
    InstanceGroupSpec,
    ModelSpec,
    QueuePolicy,
    TensorSpec,
    TimeoutAction,
)


def model_spec(**changes: object) -> ModelSpec:
    fields: dict[str, object] = {
        "name": "m",
        "version": "1",
        "platform": "pytorch_libtorch",
        "max_batch_size": 8,
        "inputs": (TensorSpec("X", "FP32", (4,)), TensorSpec("MASK", "BOOL", (-1,), optional=True)),
        "outputs": (TensorSpec("Y", "FP32", (4,)),),
    }
    fields.update(changes)
    return ModelSpec(**fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "", "datatype": "FP32", "dims": (1,)}, "tensor name must not be empty"),
        ({"name": "x", "datatype": "FLOAT", "dims": (1,)}, "tensor 'x': unknown datatype 'FLOAT'"),
        ({"name": "x", "datatype": "FP32", "dims": (3, 0)}, r"positive or -1, got \[3, 0\]"),
        ({"name": "x", "datatype": "FP32", "dims": (-2,)}, r"positive or -1, got \[-2\]"),
    ],
)
def test_tensor_spec_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorSpec(**kwargs)


def test_model_spec_rejects_what_cannot_be_served() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 0, got -1"):
        model_spec(max_batch_size=-1)
    with pytest.raises(ValueError, match="dynamic_batching needs max_batch_size > 0"):
        model_spec(max_batch_size=0, batching=BatchingSpec())
    with pytest.raises(ValueError, match="duplicate input name"):
        model_spec(inputs=(TensorSpec("X", "FP32", (1,)), TensorSpec("X", "INT8", (1,))))
    with pytest.raises(ValueError, match="duplicate output name"):
        model_spec(outputs=(TensorSpec("Y", "FP32", (1,)), TensorSpec("Y", "FP32", (2,))))


def test_model_spec_lookups_and_batched() -> None:
    spec = model_spec()
    assert spec.batched and not model_spec(max_batch_size=0).batched
    assert list(spec.input_map) == ["X", "MASK"] and spec.output_map["Y"].dims == (4,)
    assert spec.instance_groups == (InstanceGroupSpec(),)
    assert spec.execution == ExecutionSpec()


def test_a_spec_cannot_be_changed_once_built() -> None:
    parameters = {"batchwire.intra_op_threads": "2"}
    spec = model_spec(parameters=parameters)
    parameters["later"] = "x"  # the caller's dict was copied
    assert dict(spec.parameters) == {"batchwire.intra_op_threads": "2"}
    with pytest.raises(TypeError):
        spec.parameters["later"] = "x"  # read-only
    with pytest.raises(TypeError):
        spec.input_map["Z"] = TensorSpec("Z", "FP32", (1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.max_batch_size = 4


def test_batching_spec_queue_policies_by_level() -> None:
    urgent = QueuePolicy(timeout_action=TimeoutAction.DELAY, default_timeout_us=100)
    batching = BatchingSpec(
        priority_levels=3, default_priority_level=2, priority_queue_policy={1: urgent}
    )
    assert batching.queue_policy(1) is urgent
    assert batching.queue_policy(3) == batching.default_queue_policy == QueuePolicy()
    with pytest.raises(TypeError):
        batching.priority_queue_policy[2] = urgent


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preferred_batch_sizes": (4, 0)}, r"preferred_batch_size entries must be positive"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_microseconds must be >= 0, got -1"),
        (
            {"priority_levels": 2, "default_priority_level": 3},
            r"default_priority_level must be in 1..2 \(priority_levels\), got 3",
        ),
        (
            {
                "priority_levels": 2,
                "default_priority_level": 1,
                "priority_queue_policy": {3: QueuePolicy()},
            },
            r"priority_queue_policy key 3 is outside 1..2",
        ),
        (
            {"priority_queue_policy": {2: QueuePolicy()}},
            r"priority_queue_policy key 2 is outside 1..1",
        ),
    ],
)
def test_batching_spec_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingSpec(**kwargs)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: QueuePolicy(default_timeout_us=-1), "must be >= 0, got -1 and 0"),
        (lambda: QueuePolicy(max_queue_size=-5), "must be >= 0, got 0 and -5"),
        (lambda: InstanceGroupSpec(count=0), "instance_group count must be >= 1, got 0"),
        (lambda: ExecutionSpec(intra_op_threads=0), "intra_op_threads must be >= 1, got 0"),
        (lambda: ExecutionSpec(inline_below_us=-1), "inline_below_us must be >= 0, got -1"),
    ],
)
def test_policies_groups_and_execution_reject(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()
