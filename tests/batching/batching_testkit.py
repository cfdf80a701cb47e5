"""Tiny in-process models and helpers for the batching tests (no gRPC, no files)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from batchwire.core.errors import InferenceError
from batchwire.core.observer import BatchRecord
from batchwire.core.spec import BatchingSpec, InstanceGroupSpec, ModelSpec, TensorSpec
from batchwire.core.types import InferenceRequest

POISON = 666.0


def make_spec(
    *,
    max_batch_size: int = 8,
    batching: BatchingSpec | None = None,
    dims: tuple[int, ...] = (4,),
    instances: int = 1,
    ragged: bool = False,
    outputs: tuple[TensorSpec, ...] | None = None,
    **extra,
) -> ModelSpec:
    if outputs is None:
        outputs = (TensorSpec("OUTPUT0", "FP32", dims),)
    return ModelSpec(
        name="m",
        version="1",
        platform="pytorch_libtorch",
        max_batch_size=max_batch_size,
        inputs=(TensorSpec("INPUT0", "FP32", dims, allow_ragged_batch=ragged),),
        outputs=outputs,
        batching=batching,
        instance_groups=(InstanceGroupSpec(count=instances),),
        **extra,
    )


def batching(**kw) -> BatchingSpec:
    kw.setdefault("max_queue_delay_us", 0)
    return BatchingSpec(**kw)


class Call:
    """One runner invocation as the runner saw it."""

    def __init__(self, instance: int, inputs: dict) -> None:
        self.instance = instance
        self.inputs = {
            k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()
        }
        x = self.inputs.get("INPUT0")
        self.size = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim else 1
        #: First value of each row: the tests tag requests with it.
        self.tags = (
            [float(v) for v in x.reshape(x.shape[0], -1)[:, 0]]
            if isinstance(x, torch.Tensor) and x.ndim > 1
            else []
        )


class Runner:
    def __init__(self, model: TestModel, device: torch.device, index: int) -> None:
        self.model = model
        self.device = device
        self.index = index

    def __call__(self, inputs: dict) -> dict:
        model = self.model
        call = Call(self.index, inputs)
        with model.lock:
            model.calls.append(call)
        model.entered.set()
        x = inputs["INPUT0"]
        blocked = model.block_on is not None and model.block_on(call)
        if blocked and not model.gate.wait(timeout=20):
            raise RuntimeError("test gate never opened")
        if model.oom_above is not None and call.size > model.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
        if isinstance(x, torch.Tensor) and bool((x == POISON).any()):
            raise ValueError("poisoned input")
        if model.behaviour is not None:
            return model.behaviour(inputs)
        return {"OUTPUT0": x * 2}

    def close(self) -> None:
        self.model.closed.append(self.index)


class TestModel:
    """A Model whose runner doubles INPUT0, records every call, and can be held busy.

    ``block_on(call)``: when true the runner waits for ``gate`` (a threading.Event).
    """

    __test__ = False

    def __init__(self, spec: ModelSpec, **kw) -> None:
        self.spec = spec
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.block_on: Callable[[Call], bool] | None = kw.get("block_on")
        self.oom_above: int | None = kw.get("oom_above")
        self.behaviour: Callable[[dict], dict] | None = kw.get("behaviour")
        self.fail_create: bool = kw.get("fail_create", False)
        self.closed: list[int] = []
        self.model_closed = 0
        self.created: list[tuple[str, int]] = []

    def create_runner(self, device: torch.device, instance_index: int) -> Runner:
        if self.fail_create:
            raise OSError("weights file is corrupt")
        self.created.append((str(device), instance_index))
        return Runner(self, device, instance_index)

    def close(self) -> None:
        self.model_closed += 1

    def hold_first(self) -> None:
        """Block the first call (the one carrying tag 0.0) until ``gate`` is set."""
        self.block_on = lambda call: 0.0 in call.tags

    @property
    def sizes(self) -> list[int]:
        return [c.size for c in self.calls]

    @property
    def tag_batches(self) -> list[list[float]]:
        return [c.tags for c in self.calls]


def req(tag: float, rows: int = 1, width: int = 4, **kw) -> InferenceRequest:
    """A request whose rows all start with ``tag`` (the runner reports it back)."""
    x = np.full((rows, width), tag, dtype=np.float32)
    return InferenceRequest(inputs={"INPUT0": x}, id=str(tag), **kw)


class RecordingObserver:
    def __init__(self, explode: bool = False) -> None:
        self.records: list[BatchRecord] = []
        self.finished: list[tuple[InferenceRequest, InferenceError | None]] = []
        self.depths: list[tuple[int, int]] = []
        self.explode = explode

    def batch_executed(self, record: BatchRecord) -> None:
        self.records.append(record)
        if self.explode:
            raise RuntimeError("observer bug")

    def request_finished(self, request: InferenceRequest, error: InferenceError | None) -> None:
        self.finished.append((request, error))
        if self.explode:
            raise RuntimeError("observer bug")

    def queue_changed(self, model: str, version: str, priority: int, depth: int) -> None:
        assert (model, version) == ("m", "1")
        self.depths.append((priority, depth))
        if self.explode:
            raise RuntimeError("observer bug")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Test-side wait for a condition (polls; the batcher itself never polls)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def started(model: TestModel, **kw):
    from batchwire.batching import ModelBatcher

    batcher = ModelBatcher(model, **kw)
    await batcher.start()
    return batcher


async def hold_instance(batcher, model: TestModel) -> asyncio.Task:
    """Submit tag-0 request that blocks its instance until ``model.gate`` is set."""
    model.hold_first()
    task = asyncio.create_task(batcher.submit(req(0.0)))
    await until(lambda: model.entered.is_set())
    return task


def submit_all(batcher, requests) -> list[asyncio.Task]:
    return [asyncio.create_task(batcher.submit(r)) for r in requests]


async def admitted(batcher, count: int) -> None:
    """Wait until ``count`` requests are inside the batcher (queued, staged or running).

    Queue depth alone is not enough: a complete batch may already be staged on a busy
    instance (pipelining).
    """
    await until(lambda: batcher.in_flight == count)


def answered_without_waiting(coro):
    """Step ``coro`` by hand: its result if it finished without awaiting a future
    (bare yields to the loop allowed), else None."""
    for _ in range(3):
        try:
            waited_on = coro.send(None)
        except StopIteration as done:
            return done.value
        if waited_on is not None:  # a future: it waits for someone to resolve it
            break
    coro.close()
    return None


async def started_inline(max_queue_delay_us: int, warm: int = 6):
    """(model, started batcher) whose batches run inline on the event loop.

    ``warm`` requests, one at a time, take the placement past its first worker batches
    and its probe (inline from then on) and give the window a steady arrival rate.
    """
    from batchwire.core.spec import ExecutionSpec

    spec = make_spec(
        batching=batching(max_queue_delay_us=max_queue_delay_us),
        execution=ExecutionSpec(inline_below_us=10_000_000),
    )
    model = TestModel(spec)
    batcher = await started(model)
    for i in range(warm):
        await batcher.submit(req(-1.0 - i))
    return model, batcher
