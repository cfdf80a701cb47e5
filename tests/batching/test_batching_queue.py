"""Queue semantics: priorities, queue policies (timeouts, REJECT/DELAY, override, size),
deadlines and cancellation -- through ModelBatcher with a tiny in-process model."""

from __future__ import annotations

import asyncio
import time

import pytest
from batching_testkit import (
    RecordingObserver,
    TestModel,
    admitted,
    batching,
    hold_instance,
    make_spec,
    req,
    started,
    submit_all,
    until,
)

from batchwire.core.errors import (
    DeadlineExceededError,
    InvalidInputError,
    QueueFullError,
    QueueTimeoutError,
    RequestCancelledError,
)
from batchwire.core.spec import QueuePolicy, TimeoutAction


def one_at_a_time(**kw):
    """max_batch_size 1: every batch is one request, so call order == scheduling order."""
    return make_spec(max_batch_size=1, batching=batching(**kw))


async def test_priority_order_higher_level_first_default_for_zero():
    model = TestModel(one_at_a_time(priority_levels=3, default_priority_level=2))
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = []
    for tag, priority in ((1.0, 3), (2.0, 1), (3.0, 2), (4.0, 0), (5.0, 1)):
        tasks.append(asyncio.create_task(b.submit(req(tag, priority=priority))))
        await admitted(b, len(tasks) + 1)
    model.gate.set()
    await asyncio.gather(held, *tasks)
    # level 1 (2, 5), then level 2 (3, then 4 which used the default level 2), then 3.
    assert model.tag_batches == [[0.0], [2.0], [5.0], [3.0], [4.0], [1.0]]
    await b.stop()


async def test_priority_outside_range_is_invalid_and_names_the_range():
    obs = RecordingObserver()
    model = TestModel(one_at_a_time(priority_levels=2, default_priority_level=1))
    b = await started(model, observer=obs)
    with pytest.raises(InvalidInputError, match=r"priority 3 is outside 1\.\.2"):
        await b.submit(req(1.0, priority=3))
    assert model.calls == []
    assert len(obs.finished) == 1 and isinstance(obs.finished[0][1], InvalidInputError)
    await b.stop()


async def test_priority_ignored_without_levels():
    model = TestModel(one_at_a_time())
    b = await started(model)
    result = await b.submit(req(1.0, priority=7))
    assert result.outputs["OUTPUT0"][0, 0] == 2.0
    await b.stop()


async def test_reject_timeout_fails_while_queued_and_never_runs():
    policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, default_timeout_us=30_000)
    model = TestModel(one_at_a_time(default_queue_policy=policy))
    b = await started(model)
    held = await hold_instance(b, model)
    # the instance stays busy: the timeout must fire on its own (timer), not at dispatch
    with pytest.raises(QueueTimeoutError) as info:
        await b.submit(req(1.0))
    assert "queue timeout" in str(info.value) and "30000 us" in str(info.value)
    assert info.value.code.value == "UNAVAILABLE"
    assert b.queue_depth == 0
    model.gate.set()
    await held
    assert model.tag_batches == [[0.0]]
    await b.stop()


async def test_delay_timeout_schedules_expired_after_requests_in_time():
    policy = QueuePolicy(
        timeout_action=TimeoutAction.DELAY, default_timeout_us=0, allow_timeout_override=True
    )
    model = TestModel(one_at_a_time(default_queue_policy=policy))
    b = await started(model)
    held = await hold_instance(b, model)
    late = asyncio.create_task(b.submit(req(1.0, timeout_us=10_000)))
    await until(lambda: b.queue_depth == 1)
    await asyncio.sleep(0.2)  # well past the 10 ms timeout: request 1 is now delayed
    others = submit_all(b, [req(2.0), req(3.0)])
    await until(lambda: b.queue_depth == 3)
    model.gate.set()
    results = await asyncio.gather(held, late, *others)
    assert model.tag_batches == [[0.0], [2.0], [3.0], [1.0]]
    assert results[1].outputs["OUTPUT0"][0, 0] == 2.0  # delayed, not failed
    await b.stop()


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed", "not-allowed"])
async def test_timeout_override_honoured_only_when_allowed(allowed: bool) -> None:
    policy = QueuePolicy(default_timeout_us=0, allow_timeout_override=allowed)
    model = TestModel(one_at_a_time(default_queue_policy=policy))
    b = await started(model)
    held = await hold_instance(b, model)
    task = asyncio.create_task(b.submit(req(1.0, timeout_us=10_000)))
    await until(lambda: b.queue_depth == 1)
    await asyncio.sleep(0.2)
    if allowed:
        assert task.done()
        with pytest.raises(QueueTimeoutError, match="10000 us"):
            await task
    else:
        assert not task.done()
    model.gate.set()
    await held
    if not allowed:
        assert (await task).outputs["OUTPUT0"][0, 0] == 2.0
    await b.stop()


async def test_per_level_policy_applies_to_its_level_only():
    strict = QueuePolicy(default_timeout_us=10_000)
    model = TestModel(
        one_at_a_time(
            priority_levels=2, default_priority_level=1, priority_queue_policy={2: strict}
        )
    )
    b = await started(model)
    held = await hold_instance(b, model)
    p1 = asyncio.create_task(b.submit(req(1.0, priority=1)))
    with pytest.raises(QueueTimeoutError, match="priority level 2"):
        await b.submit(req(2.0, priority=2))
    assert not p1.done()
    model.gate.set()
    await asyncio.gather(held, p1)
    await b.stop()


async def test_max_queue_size_rejects_and_loses_nothing_else():
    obs = RecordingObserver()
    model = TestModel(one_at_a_time(default_queue_policy=QueuePolicy(max_queue_size=2)))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)  # running, so not counted in the queue
    queued = submit_all(b, [req(1.0), req(2.0)])
    await until(lambda: b.queue_depth == 2)
    with pytest.raises(QueueFullError) as info:
        await b.submit(req(3.0))
    assert str(info.value) == "queue for model 'm' priority level 1 is full (max_queue_size 2)"
    assert info.value.code.value == "UNAVAILABLE"
    assert b.queue_depth == 2
    model.gate.set()
    results = await asyncio.gather(held, *queued)
    assert [r.outputs["OUTPUT0"][0, 0] for r in results] == [0.0, 2.0, 4.0]
    assert model.tag_batches == [[0.0], [1.0], [2.0]]
    assert len(obs.finished) == 4  # three answered + one rejected, each exactly once
    await b.stop()


async def test_deadline_passed_while_queued_fails_and_never_runs():
    model = TestModel(make_spec(batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    with pytest.raises(DeadlineExceededError) as info:
        await b.submit(req(1.0, deadline=time.monotonic() + 0.03))
    assert info.value.code.value == "DEADLINE_EXCEEDED"
    assert b.queue_depth == 0
    model.gate.set()
    await held
    assert model.tag_batches == [[0.0]]
    await b.stop()


async def test_deadline_already_passed_never_reaches_idle_instance():
    model = TestModel(make_spec(batching=batching()))
    b = await started(model)
    with pytest.raises(DeadlineExceededError):
        await b.submit(req(1.0, deadline=time.monotonic() - 1.0))
    assert model.calls == []
    assert (await b.submit(req(2.0))).outputs["OUTPUT0"][0, 0] == 4.0
    await b.stop()


async def test_cancelled_submit_is_withdrawn_from_the_queue():
    obs = RecordingObserver()
    model = TestModel(make_spec(batching=batching()))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    victim, keeper = submit_all(b, [req(1.0), req(2.0)])
    await until(lambda: b.queue_depth == 2)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert b.queue_depth == 1
    model.gate.set()
    await asyncio.gather(held, keeper)
    assert model.tag_batches == [[0.0], [2.0]]
    cancelled = [e for r, e in obs.finished if r.id == "1.0"]
    assert len(cancelled) == 1 and isinstance(cancelled[0], RequestCancelledError)
    assert len(obs.finished) == 3
    await b.stop()


async def test_a_lone_request_cancelled_before_its_pass_never_runs():
    """A request alone in flight runs its own scheduling pass after one yield; cancelled
    during that yield, it is withdrawn and the model never sees it."""

    obs = RecordingObserver()
    model = TestModel(make_spec(batching=batching(max_queue_delay_us=2000)))
    b = await started(model, observer=obs)
    victim = asyncio.ensure_future(b.submit(req(1.0)))
    await asyncio.sleep(0)  # the victim runs up to its yield
    assert b.in_flight == 1 and b.queue_depth == 1
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert b.in_flight == 0 and b.queue_depth == 0
    assert model.calls == []
    [(request, error)] = obs.finished
    assert request.id == "1.0" and isinstance(error, RequestCancelledError)
    assert (await b.submit(req(2.0))).outputs["OUTPUT0"][0, 0] == 4.0
    await b.stop()


async def test_cancelled_while_running_drops_the_result():
    obs = RecordingObserver()
    model = TestModel(make_spec(batching=batching()))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    held.cancel()
    with pytest.raises(asyncio.CancelledError):
        await held
    model.gate.set()
    # the model still finishes the batch; its result goes nowhere, nothing breaks
    assert (await b.submit(req(1.0))).outputs["OUTPUT0"][0, 0] == 2.0
    assert len(obs.finished) == 2
    assert isinstance(obs.finished[0][1], RequestCancelledError)
    await b.stop()


async def test_queue_changed_reports_depth_per_level():
    obs = RecordingObserver()
    model = TestModel(one_at_a_time(priority_levels=2, default_priority_level=2))
    b = await started(model, observer=obs)
    held = await hold_instance(b, model)
    tasks = [asyncio.create_task(b.submit(req(1.0, priority=1)))]
    await until(lambda: b.queue_depth == 1)
    tasks.append(asyncio.create_task(b.submit(req(2.0))))
    await until(lambda: b.queue_depth == 2)
    model.gate.set()
    await asyncio.gather(held, *tasks)
    # held: +1/-1 on level 2; then level 1 +1, level 2 +1, then both drained
    assert obs.depths[:2] == [(2, 1), (2, 0)]
    assert obs.depths[2:4] == [(1, 1), (2, 1)]
    assert sorted(obs.depths[4:]) == [(1, 0), (2, 0)]
    await b.stop()


async def test_staged_batch_skips_cancelled_and_expired_requests():
    model = TestModel(make_spec(max_batch_size=3, batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    soon = time.monotonic() + 0.05
    cancelled, expired, kept = submit_all(b, [req(1.0), req(2.0, deadline=soon), req(3.0)])
    await admitted(b, 4)
    assert b.queue_depth == 0  # a complete batch of 3, staged behind the held one
    cancelled.cancel()
    await asyncio.sleep(0.1)  # past the deadline of request 2
    model.gate.set()
    with pytest.raises(DeadlineExceededError):
        await expired
    assert (await kept).outputs["OUTPUT0"][0, 0] == 6.0
    await held
    assert cancelled.cancelled()
    # neither the cancelled nor the expired request reached the model
    assert model.tag_batches == [[0.0], [3.0]]
    await b.stop()
