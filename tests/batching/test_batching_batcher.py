"""ModelBatcher end to end with tiny in-process models: batching by items, scheduler
modes, shapes, ragged batches, ordering, failure isolation, warmup, start/stop."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest
import torch
from batching_testkit import (
    POISON,
    RecordingObserver,
    TestModel,
    admitted,
    answered_without_waiting,
    batching,
    hold_instance,
    make_spec,
    req,
    started,
    started_inline,
    submit_all,
    until,
)

from batchwire.batching import ModelBatcher
from batchwire.core.errors import (
    InvalidInputError,
    ModelExecutionError,
    ModelLoadError,
    ModelNotReadyError,
    ServerShuttingDownError,
)
from batchwire.core.spec import TensorSpec, WarmupSpec
from batchwire.core.types import InferenceRequest


async def test_results_timings_and_batch_records():
    obs = RecordingObserver()
    model = TestModel(make_spec(batching=batching()))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0, rows=2), req(2.0, rows=3)])
    await until(lambda: b.queue_depth == 2)
    model.gate.set()
    _, r1, r2 = await asyncio.gather(held, *tasks)
    assert r1.outputs["OUTPUT0"].shape == (2, 4) and (r1.outputs["OUTPUT0"] == 2.0).all()
    assert r2.outputs["OUTPUT0"].shape == (3, 4) and (r2.outputs["OUTPUT0"] == 4.0).all()
    assert r1.outputs["OUTPUT0"].dtype == np.float32
    t = r1.timings
    assert t.received_ns > 0 and t.queue_ns > 0 and t.compute_infer_ns > 0
    assert t.batch_size == 5 and r2.timings.batch_size == 5
    rec = obs.records[-1]
    assert (rec.size, rec.padded_size, rec.request_count, rec.device, rec.instance) == (
        5,
        5,
        2,
        "cpu",
        0,
    )
    assert rec.error is None and len(obs.records) == 2
    await b.stop()


async def test_max_batch_size_counts_items_and_never_splits_a_request():
    model = TestModel(make_spec(max_batch_size=8, batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0, rows=3), req(2.0, rows=3), req(3.0, rows=3), req(4.0, rows=2)])
    await admitted(b, 5)
    assert b.queue_depth == 2  # 3+3 is complete (3 more would not fit): staged already
    model.gate.set()
    await asyncio.gather(held, *tasks)
    # 3+3 = 6, the next 3 would make 9 > 8: the batch closes (no split, no reorder)
    assert model.sizes == [1, 6, 5]
    assert model.tag_batches[1:] == [[1.0] * 3 + [2.0] * 3, [3.0] * 3 + [4.0] * 2]
    await b.stop()


async def test_no_dynamic_batching_runs_each_request_alone_with_its_batch_dim():
    model = TestModel(make_spec(max_batch_size=8, batching=None))
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0, rows=2), req(2.0, rows=2), req(3.0, rows=1)])
    await until(lambda: b.queue_depth == 3)
    model.gate.set()
    results = await asyncio.gather(held, *tasks)
    assert model.sizes == [1, 2, 2, 1]
    assert results[1].outputs["OUTPUT0"].shape == (2, 4)
    await b.stop()


async def test_max_batch_size_zero_runs_requests_as_given():
    model = TestModel(make_spec(max_batch_size=0, batching=None))
    b = await started(model)
    x = np.arange(4, dtype=np.float32)
    results = await asyncio.gather(
        *(b.submit(InferenceRequest(inputs={"INPUT0": x})) for _ in range(3))
    )
    assert [tuple(c.inputs["INPUT0"].shape) for c in model.calls] == [(4,)] * 3
    assert results[0].outputs["OUTPUT0"].tolist() == [0, 2, 4, 6]
    await b.stop()


async def test_mixed_shapes_batch_separately_and_do_not_starve():
    model = TestModel(make_spec(max_batch_size=2, dims=(-1,), batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    reqs = [
        req(1.0, width=3),
        req(2.0, width=5),
        req(3.0, width=3),
        req(4.0, width=3),
        req(5.0, width=5),
        req(6.0, width=3),
    ]
    tasks = []
    for r in reqs:  # queue one by one so arrival order is exact
        tasks.append(asyncio.create_task(b.submit(r)))
        await admitted(b, len(tasks) + 1)
    model.gate.set()
    results = await asyncio.gather(held, *tasks)
    # oldest request's shape group first; the other group's head is older than the
    # rest of the first group, so it goes next (no starvation)
    assert model.tag_batches[1:] == [[1.0, 3.0], [2.0, 5.0], [4.0, 6.0]]
    assert [r.outputs["OUTPUT0"].shape for r in results[1:]] == [
        (1, 3),
        (1, 5),
        (1, 3),
        (1, 3),
        (1, 5),
        (1, 3),
    ]
    await b.stop()


async def test_ragged_batch_pads_and_slices_outputs_back():
    obs = RecordingObserver()
    spec = make_spec(dims=(-1,), ragged=True, batching=batching(ragged_pad_value=-7.0))
    model = TestModel(spec)
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0, width=2), req(2.0, width=4), req(3.0, width=3)])
    await until(lambda: b.queue_depth == 3)
    model.gate.set()
    _, r1, r2, r3 = await asyncio.gather(held, *tasks)
    seen = model.calls[1].inputs["INPUT0"]
    assert seen.tolist() == [[1, 1, -7, -7], [2, 2, 2, 2], [3, 3, 3, -7]]
    assert r1.outputs["OUTPUT0"].tolist() == [[2, 2]]
    assert r2.outputs["OUTPUT0"].tolist() == [[4, 4, 4, 4]]
    assert r3.outputs["OUTPUT0"].tolist() == [[6, 6, 6]]
    rec = obs.records[-1]
    assert (rec.size, rec.padded_size) == (3, 4)
    await b.stop()


@pytest.mark.parametrize("preserve", [True, False], ids=["preserved", "not-preserved"])
async def test_preserve_ordering_across_two_instances(preserve: bool) -> None:
    spec = make_spec(max_batch_size=1, instances=2, batching=batching(preserve_ordering=preserve))
    model = TestModel(spec, block_on=lambda call: 1.0 in call.tags)
    b = await started(model)
    done: list[str] = []
    slow, fast = submit_all(b, [req(1.0), req(2.0)])
    for t, name in ((slow, "slow"), (fast, "fast")):
        t.add_done_callback(lambda _, name=name: done.append(name))
    await until(lambda: len(model.calls) == 2)  # both running, on different instances
    assert {c.instance for c in model.calls} == {0, 1}
    await asyncio.sleep(0.05)  # the fast one has long finished on its instance
    if preserve:
        assert done == []  # held back behind the earlier request
    else:
        assert done == ["fast"]
    model.gate.set()
    await asyncio.gather(slow, fast)
    assert done == (["slow", "fast"] if preserve else ["fast", "slow"])
    await b.stop()


async def test_poisoned_request_is_isolated_by_halves(caplog):
    caplog.set_level(logging.WARNING)
    obs = RecordingObserver()
    model = TestModel(make_spec(batching=batching()))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    tags = [1.0, 2.0, POISON, 4.0, 5.0]
    tasks = submit_all(b, [req(t) for t in tags])
    await until(lambda: b.queue_depth == 5)
    model.gate.set()
    results = await asyncio.gather(held, *tasks, return_exceptions=True)
    for tag, result in zip(tags, results[1:], strict=True):
        if tag == POISON:
            assert isinstance(result, ModelExecutionError)
            assert str(result) == "model 'm' version '1' failed: ValueError: poisoned input"
            assert result.code.value == "INTERNAL"
        else:
            assert result.outputs["OUTPUT0"][0, 0] == 2 * tag
    # [1 2 P 4 5] fails -> [1 2] ok, [P 4 5] fails -> [P] fails alone, [4 5] ok
    assert model.sizes[1:] == [5, 2, 3, 1, 2]
    failed = [r for r in obs.records if r.error is not None]
    assert [r.size for r in failed] == [5, 3, 1]
    assert len(obs.finished) == 6
    await b.stop()
    assert "retrying by halves" in caplog.text


async def test_without_retry_by_halves_the_whole_batch_fails():
    model = TestModel(make_spec(batching=batching(retry_by_halves=False)))
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0), req(POISON), req(3.0)])
    await until(lambda: b.queue_depth == 3)
    model.gate.set()
    results = await asyncio.gather(held, *tasks, return_exceptions=True)
    assert all(isinstance(r, ModelExecutionError) for r in results[1:])
    assert model.sizes == [1, 3]
    await b.stop()


async def test_out_of_memory_splits_the_batch_before_failing_anyone(caplog):
    caplog.set_level(logging.WARNING)
    model = TestModel(make_spec(batching=batching(retry_by_halves=False)), oom_above=2)
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(float(i)) for i in range(1, 6)])
    await until(lambda: b.queue_depth == 5)
    model.gate.set()
    results = await asyncio.gather(held, *tasks)
    assert [r.outputs["OUTPUT0"][0, 0] for r in results[1:]] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert model.sizes == [1, 5, 2, 3, 1, 2]
    await b.stop()
    assert "out of memory" in caplog.text and "splitting it in halves" in caplog.text


async def test_out_of_memory_without_split_fails_the_batch():
    spec = make_spec(batching=batching(retry_by_halves=False, split_on_oom=False))
    model = TestModel(spec, oom_above=1)
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0), req(2.0)])
    await until(lambda: b.queue_depth == 2)
    model.gate.set()
    results = await asyncio.gather(held, *tasks, return_exceptions=True)
    assert all(
        isinstance(r, ModelExecutionError) and "out of memory" in str(r) for r in results[1:]
    )
    await b.stop()


async def test_missing_output_fails_with_a_message_naming_it():
    spec = make_spec(
        batching=batching(),
        outputs=(TensorSpec("OUTPUT0", "FP32", (4,)), TensorSpec("OUTPUT1", "FP32", (4,))),
    )
    model = TestModel(spec)
    b = await started(model)
    with pytest.raises(ModelExecutionError, match="did not return output 'OUTPUT1'"):
        await b.submit(req(1.0))
    assert model.sizes == [1]  # output errors are not retried
    await b.stop()


async def test_wrong_output_batch_dimension_fails_with_expected_and_got():
    model = TestModel(
        make_spec(batching=batching()),
        behaviour=lambda inputs: {"OUTPUT0": inputs["INPUT0"][:1]},
    )
    b = await started(model)
    with pytest.raises(
        ModelExecutionError,
        match=r"output 'OUTPUT0' has shape \[1, 4\], expected \[3, 4\] "
        r"\(config dims \[4\] and batch size 3\)",
    ):
        await b.submit(req(1.0, rows=3))
    await b.stop()


async def test_runner_inference_error_keeps_its_class_and_message():
    def behaviour(inputs):
        raise InvalidInputError("model 'm' version '1': input 'INPUT0' must be sorted")

    model = TestModel(make_spec(batching=batching()), behaviour=behaviour)
    b = await started(model)
    with pytest.raises(InvalidInputError) as info:
        await b.submit(req(1.0))
    assert str(info.value) == "model 'm' version '1': input 'INPUT0' must be sorted"
    await b.stop()


async def test_requested_outputs_subset_and_order():
    spec = make_spec(
        batching=batching(),
        outputs=(TensorSpec("OUTPUT0", "FP32", (4,)), TensorSpec("OUTPUT1", "INT64", (4,))),
    )
    model = TestModel(
        spec, behaviour=lambda i: {"OUTPUT0": i["INPUT0"] * 2, "OUTPUT1": i["INPUT0"].long()}
    )
    b = await started(model)
    r = await b.submit(req(3.0, requested_outputs=("OUTPUT1", "OUTPUT0")))
    assert list(r.outputs) == ["OUTPUT1", "OUTPUT0"] and r.outputs["OUTPUT1"].dtype == np.int64
    r = await b.submit(req(3.0, requested_outputs=("OUTPUT1",)))
    assert list(r.outputs) == ["OUTPUT1"]
    r = await b.submit(req(3.0))
    assert list(r.outputs) == ["OUTPUT0", "OUTPUT1"]
    await b.stop()


async def test_warmup_runs_on_every_instance_before_ready():
    warm = WarmupSpec("w", batch_size=2, inputs={"INPUT0": ("FP32", (4,), "random")}, count=3)
    spec = make_spec(instances=2, batching=batching(), warmup=(warm,))
    model = TestModel(spec)
    b = ModelBatcher(model)
    assert b.devices == [torch.device("cpu"), torch.device("cpu")]
    await b.start()
    assert sorted(model.created) == [("cpu", 0), ("cpu", 1)]
    assert model.sizes == [2] * 6
    assert sorted(c.instance for c in model.calls) == [0, 0, 0, 1, 1, 1]
    await b.stop()
    assert sorted(model.closed) == [0, 1] and model.model_closed == 1
    await b.stop()
    assert model.model_closed == 1


async def test_warmup_failure_is_a_load_error():
    warm = WarmupSpec("w", batch_size=1, inputs={"INPUT0": ("FP32", (4,), "zero")})
    model = TestModel(make_spec(batching=batching(), warmup=(warm,)), oom_above=0)
    b = ModelBatcher(model)
    with pytest.raises(
        ModelLoadError,
        match=r"warmup 'w' failed on instance 0 \(cpu\): RuntimeError: CUDA out of memory",
    ):
        await b.start()
    with pytest.raises(ModelNotReadyError):
        await b.submit(req(1.0))
    assert model.model_closed == 1


async def test_runner_creation_failure_is_a_load_error():
    model = TestModel(make_spec(batching=batching()), fail_create=True)
    with pytest.raises(
        ModelLoadError,
        match="creating instance 0 on cpu failed: OSError: weights file is corrupt",
    ):
        await ModelBatcher(model).start()


async def test_stop_drain_finishes_queued_work_then_refuses_new():
    model = TestModel(make_spec(batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0), req(2.0), req(3.0)])
    await until(lambda: b.queue_depth == 3)
    stopper = asyncio.create_task(b.stop(drain=True))
    await asyncio.sleep(0.01)
    with pytest.raises(ServerShuttingDownError):
        await b.submit(req(9.0))
    model.gate.set()
    results = await asyncio.gather(held, *tasks)
    await stopper
    assert [r.outputs["OUTPUT0"][0, 0] for r in results] == [0.0, 2.0, 4.0, 6.0]
    await b.stop()  # idempotent


async def test_stop_without_drain_fails_queued_and_finishes_running():
    obs = RecordingObserver()
    model = TestModel(make_spec(batching=batching()))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0), req(2.0)])
    await until(lambda: b.queue_depth == 2)
    stopper = asyncio.create_task(b.stop(drain=False))
    for t in tasks:
        with pytest.raises(ServerShuttingDownError):
            await t
    assert not stopper.done()  # waits for the running batch
    model.gate.set()
    assert (await held).outputs["OUTPUT0"][0, 0] == 0.0
    await stopper
    assert model.sizes == [1]
    assert len(obs.finished) == 3
    await asyncio.gather(b.stop(), b.stop())


async def test_stop_timeout_fails_what_is_stuck():
    model = TestModel(make_spec(batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    await b.stop(timeout=0.1)
    with pytest.raises(ServerShuttingDownError, match="did not finish"):
        await held
    model.gate.set()


async def test_observer_exceptions_are_logged_and_ignored(caplog):
    caplog.set_level(logging.ERROR)
    obs = RecordingObserver(explode=True)
    model = TestModel(make_spec(batching=batching()))
    b = await started(model, observer=obs)
    results = await asyncio.gather(*(b.submit(req(float(i))) for i in range(3)))
    assert len(results) == 3 and len(obs.finished) == 3
    await b.stop()
    assert "observer" in caplog.text and "raised; ignored" in caplog.text


async def test_nothing_left_behind_after_stop():
    model = TestModel(make_spec(instances=2, batching=batching(max_queue_delay_us=1000)))
    b = await started(model)
    for _ in range(3):
        await asyncio.gather(*(b.submit(req(float(i))) for i in range(10)))
    await b.stop()
    assert b.idle and b.in_flight == 0 and b.queue_depth == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("batchwire-m-")]


async def test_submit_before_start_is_not_ready():
    b = ModelBatcher(TestModel(make_spec(batching=batching())))
    with pytest.raises(ModelNotReadyError):
        await b.submit(req(1.0))
    await b.stop()


async def test_a_lone_request_runs_inline_and_is_answered_without_waiting_on_its_future():
    """Alone in flight, on an idle instance that runs batches inline, a request is
    answered inside ``submit`` after one yield to the loop (which lets requests of the
    same loop iteration join its batch): no second trip to wake on its future."""

    model, b = await started_inline(max_queue_delay_us=2000)
    result = answered_without_waiting(b.submit(req(42.0)))
    assert result is not None, "the lone request waited on its future"
    np.testing.assert_array_equal(result.outputs["OUTPUT0"], np.full((1, 4), 84.0))
    assert model.tag_batches[-1] == [42.0]
    assert b.idle
    # Requests submitted in one loop iteration still make one batch.
    await asyncio.gather(*(b.submit(req(float(i))) for i in range(10, 14)))
    assert model.tag_batches[-1] == [10.0, 11.0, 12.0, 13.0]
    await b.stop()
