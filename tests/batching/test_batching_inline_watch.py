"""A batch run inline on the event loop that hangs is reported from the watch thread
(the loop's own watchdog timer cannot fire while the loop is blocked): a WARNING while
it holds the loop, ``inline_watch.blocked()`` for the metrics endpoint, and a WARNING
when it returns."""

from __future__ import annotations

import logging
import threading

from batching_testkit import TestModel, batching, make_spec, req, started

from batchwire.batching import inline_watch
from batchwire.batching.batcher import HANG_TIMEOUT_KEY
from batchwire.core.spec import ExecutionSpec


async def test_an_inline_batch_past_the_hang_timeout_is_reported_while_it_blocks(caplog):
    stall = threading.Event()  # set by the test: the next batch sleeps 0.6 s

    def behaviour(inputs: dict) -> dict:
        if stall.is_set():
            threading.Event().wait(0.6)  # blocks the loop thread: the batch runs inline
        return {"OUTPUT0": inputs["INPUT0"] * 2}

    spec = make_spec(
        batching=batching(),
        execution=ExecutionSpec(inline_below_us=10_000_000),
        parameters={HANG_TIMEOUT_KEY: "100"},
    )
    model = TestModel(spec, behaviour=behaviour)
    batcher = await started(model)
    try:
        for i in range(6):  # past the placement's first worker batches and its probe
            await batcher.submit(req(-1.0 - i))
        seen: list[list[tuple[str, str, float]]] = []
        # Looks from another thread while the loop is blocked, as a metrics scrape does.
        probe = threading.Timer(0.4, lambda: seen.append(inline_watch.blocked()))
        caplog.set_level(logging.WARNING, logger="batchwire.batching.inline_watch")
        stall.set()
        loop_thread = threading.get_ident()
        probe.start()
        result = await batcher.submit(req(1.0))
        probe.join()
        assert threading.get_ident() == loop_thread
        assert float(result.outputs["OUTPUT0"][0, 0]) == 2.0
        # The batch ran on this (the loop's) thread: it is the one the runner recorded.
        assert model.calls[-1].tags == [1.0]
    finally:
        stall.clear()
        await batcher.stop()
    assert len(seen) == 1 and len(seen[0]) == 1, seen
    model_name, version, seconds = seen[0][0]
    assert (model_name, version) == ("m", "1") and seconds >= 0.1
    messages = [r.getMessage() for r in caplog.records]
    held = [m for m in messages if "has held it for" in m]
    assert len(held) == 1, messages
    assert "model 'm' version 1" in held[0] and "batchwire.hang_timeout_ms=100" in held[0]
    assert any("returned after" in m for m in messages), messages
    assert inline_watch.blocked() == []


async def test_a_short_inline_batch_is_not_reported(caplog):
    spec = make_spec(
        batching=batching(),
        execution=ExecutionSpec(inline_below_us=10_000_000),
        parameters={HANG_TIMEOUT_KEY: "200"},
    )
    batcher = await started(TestModel(spec))
    caplog.set_level(logging.WARNING, logger="batchwire.batching.inline_watch")
    try:
        for i in range(20):
            await batcher.submit(req(float(i)))
    finally:
        await batcher.stop()
    assert [r.getMessage() for r in caplog.records] == []
