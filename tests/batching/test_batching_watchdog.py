"""The batcher's hang watchdog: a batch running past ``batchwire.hang_timeout_ms`` marks
its instance hung; with every instance hung the model is not ready and refuses new
requests (UNAVAILABLE naming the hang) while queued requests wait, or expire at their
deadline; a hung batch that returns makes the model ready again."""

from __future__ import annotations

import asyncio
import time

import pytest
from batching_testkit import (
    RecordingObserver,
    TestModel,
    batching,
    hold_instance,
    make_spec,
    req,
    started,
    until,
)

from batchwire.batching.batcher import HANG_TIMEOUT_KEY
from batchwire.core.errors import (
    DeadlineExceededError,
    ModelLoadError,
    ModelNotReadyError,
    ServerShuttingDownError,
)
from batchwire.core.spec import ExecutionSpec


class HangObserver(RecordingObserver):
    def __init__(self) -> None:
        super().__init__()
        self.hangs: list[tuple[str, str, int, int]] = []

    def hang_changed(self, model: str, version: str, hung: int, new_hangs: int) -> None:
        self.hangs.append((model, version, hung, new_hangs))


def watched_model(hang_ms: str, instances: int = 1) -> TestModel:
    # inline_below_us=0: every batch goes to a worker thread (an inline batch would
    # block the test's own loop).
    return TestModel(
        make_spec(
            batching=batching(),
            instances=instances,
            execution=ExecutionSpec(inline_below_us=0),
            parameters={HANG_TIMEOUT_KEY: hang_ms},
        )
    )


async def test_hung_instance_makes_the_model_unready_until_its_batch_returns() -> None:
    model = watched_model("50")
    observer = HangObserver()
    batcher = await started(model, observer=observer)
    changes: list[bool] = []
    batcher.on_hang_change = lambda: changes.append(batcher.hung)
    try:
        stuck = await hold_instance(batcher, model)
        # Queued before the hang is seen: one with a deadline, one without.
        expiring = asyncio.create_task(batcher.submit(req(1.0, deadline=time.monotonic() + 0.4)))
        patient = asyncio.create_task(batcher.submit(req(2.0)))
        await until(lambda: batcher.hung)
        assert batcher.hung_instances == 1
        assert observer.hangs == [("m", "1", 1, 1)]
        assert changes == [True]

        with pytest.raises(ModelNotReadyError) as refused:
            await batcher.submit(req(3.0))
        assert "instance(s) are hung" in refused.value.message
        assert f"{HANG_TIMEOUT_KEY}=50 ms" in refused.value.message

        # The deadline passes while the batch is still stuck: answered then, not later.
        with pytest.raises(DeadlineExceededError):
            await expiring
        assert not stuck.done() and not patient.done()
        assert batcher.hung

        model.gate.set()
        assert (await stuck).outputs["OUTPUT0"].tolist() == [[0.0] * 4]
        assert (await patient).outputs["OUTPUT0"].tolist() == [[4.0] * 4]
        assert not batcher.hung and batcher.hung_instances == 0
        assert observer.hangs[-1] == ("m", "1", 0, 0)
        assert changes == [True, False]
        assert (await batcher.submit(req(5.0))).outputs["OUTPUT0"].tolist() == [[10.0] * 4]
    finally:
        model.gate.set()
        await batcher.stop()


async def test_one_hung_instance_of_two_leaves_the_model_serving() -> None:
    model = watched_model("50", instances=2)
    observer = HangObserver()
    batcher = await started(model, observer=observer)
    try:
        stuck = await hold_instance(batcher, model)
        await until(lambda: batcher.hung_instances == 1)
        assert not batcher.hung
        for tag in (1.0, 2.0, 3.0):  # served by the other instance
            result = await batcher.submit(req(tag))
            assert result.outputs["OUTPUT0"].tolist() == [[tag * 2] * 4]
        assert {call.instance for call in model.calls[1:]} == {1}
        model.gate.set()
        await stuck
        assert batcher.hung_instances == 0
        assert [hung for _, _, hung, _ in observer.hangs] == [1, 0]
    finally:
        model.gate.set()
        await batcher.stop()


async def test_zero_turns_the_watchdog_off() -> None:
    model = watched_model("0")
    observer = HangObserver()
    batcher = await started(model, observer=observer)
    try:
        stuck = await hold_instance(batcher, model)
        await asyncio.sleep(0.2)
        assert not batcher.hung and batcher.hung_instances == 0
        assert observer.hangs == []
        model.gate.set()
        await stuck
    finally:
        model.gate.set()
        await batcher.stop()


@pytest.mark.parametrize("value", ["-1", "soon"])
async def test_bad_hang_timeout_is_a_load_error(value: str) -> None:
    with pytest.raises(ModelLoadError, match=HANG_TIMEOUT_KEY):
        await started(watched_model(value))


async def test_stopping_a_hung_model_clears_its_hang_report() -> None:
    model = watched_model("50")
    observer = HangObserver()
    batcher = await started(model, observer=observer)
    try:
        stuck = await hold_instance(batcher, model)
        await until(lambda: batcher.hung)
        await batcher.stop(timeout=0.1)  # the stuck batch outlives the drain
        with pytest.raises(ServerShuttingDownError):
            await stuck
        assert batcher.hung_instances == 0
        assert observer.hangs[-1] == ("m", "1", 0, 0)
    finally:
        model.gate.set()
