"""core.types and core.model: a request's batch size, and the model contract's protocols."""

from __future__ import annotations

import numpy as np
import torch

from batchwire.core.model import Model, ModelRunner, TensorDict
from batchwire.core.observer import BatchObserver, BatchRecord, NullObserver
from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest, InferenceResult, RequestTimings


def test_batch_size_is_the_leading_dimension_of_the_first_input() -> None:
    assert InferenceRequest({"X": np.zeros((3, 4)), "Y": np.zeros((3,))}).batch_size == 3
    assert InferenceRequest({"X": np.float32(1.0).reshape(())}).batch_size == 1  # a scalar
    assert InferenceRequest({}).batch_size == 1


def test_each_request_gets_its_own_timings() -> None:
    first, second = InferenceRequest({}), InferenceRequest({})
    first.timings.queue_ns = 5
    assert second.timings == RequestTimings()
    assert InferenceResult({}, first.timings).timings.queue_ns == 5


class _Runner:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, inputs: TensorDict) -> TensorDict:
        return inputs


class _Model:
    def __init__(self) -> None:
        self.spec = ModelSpec(
            "m",
            "1",
            "python",
            0,
            (TensorSpec("X", "FP32", (1,)),),
            (TensorSpec("X", "FP32", (1,)),),
        )

    def create_runner(self, device: torch.device, instance_index: int) -> ModelRunner:
        return _Runner(device)

    def close(self) -> None:
        pass


def test_loaders_are_checked_against_the_model_protocols_at_runtime() -> None:
    model = _Model()
    assert isinstance(model, Model)
    assert isinstance(model.create_runner(torch.device("cpu"), 0), ModelRunner)
    assert not isinstance(object(), Model)


def test_the_null_observer_is_an_observer_that_ignores_everything() -> None:
    observer: BatchObserver = NullObserver()
    record = BatchRecord("m", "1", 1, 1, 1, "cpu", 0, 0, 0, 0, 0)
    assert observer.batch_executed(record) is None
    assert observer.request_finished(InferenceRequest({}), None) is None
    assert observer.queue_changed("m", "1", 1, 0) is None
