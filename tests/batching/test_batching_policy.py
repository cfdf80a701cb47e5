"""The dispatch (wait) policy: unit tests on DispatchPolicy with explicit times, plus the
batcher-level effects: full/preferred batches go at once, the window bounds the wait, a
lone request never waits, returning clients are waited for."""

from __future__ import annotations

import asyncio
import time

from batching_testkit import (
    TestModel,
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

from batchwire.batching.policy import DispatchPolicy

D = 0.002  # 2 ms window


def test_fixed_window_holds_until_oldest_plus_delay():
    p = DispatchPolicy(D, adaptive=False)
    assert p.hold_until(10.0, oldest=10.0, count=1, in_flight=1, queued=1) == 10.0 + D
    assert p.hold_until(10.0 + D, oldest=10.0, count=1, in_flight=1, queued=1) is None


def test_zero_delay_never_holds():
    for adaptive in (True, False):
        p = DispatchPolicy(0.0, adaptive=adaptive)
        assert p.hold_until(1.0, oldest=1.0, count=1, in_flight=5, queued=1) is None


def test_other_shape_groups_queued_means_dispatch_now():
    for adaptive in (True, False):
        p = DispatchPolicy(D, adaptive=adaptive)
        p.on_answered(0.999, 3)
        assert p.hold_until(1.0, oldest=1.0, count=2, in_flight=3, queued=3) is None


def test_alone_never_waits():
    p = DispatchPolicy(D, adaptive=True)
    # a steady stream, one request at a time (concurrency 1)
    t = 0.0
    for _ in range(20):
        p.on_arrival(t)
        assert p.hold_until(t, oldest=t, count=1, in_flight=1, queued=1) is None
        p.on_answered(t + 0.0005, 1)
        t += 0.001


def test_waits_for_returning_clients_then_dispatches_when_all_back():
    p = DispatchPolicy(D, adaptive=True)
    p.on_answered(1.0, 3)  # a batch of 3 answered: 3 clients about to come back
    p.on_arrival(1.0001)
    assert p.hold_until(1.0001, oldest=1.0001, count=1, in_flight=1, queued=1) == 1.0001 + D
    p.on_arrival(1.0002)
    assert p.hold_until(1.0002, oldest=1.0001, count=2, in_flight=2, queued=2) == 1.0001 + D
    p.on_arrival(1.0003)  # the last one is back: nobody else is coming
    assert p.hold_until(1.0003, oldest=1.0001, count=3, in_flight=3, queued=3) is None


def test_returning_expires_after_a_quiet_window():
    p = DispatchPolicy(D, adaptive=True)
    p.on_answered(1.0, 5)
    p.on_arrival(1.0 + 3 * D)  # long after: those clients are not coming back soon
    assert p.hold_until(1.0 + 3 * D, oldest=1.0 + 3 * D, count=1, in_flight=1, queued=1) is None


def test_arrival_rate_rule_with_work_in_flight():
    p = DispatchPolicy(D, adaptive=True)
    t = 5.0
    for _ in range(30):  # arrivals every 100 us
        p.on_arrival(t)
        t += 0.0001
    last = t - 0.0001
    assert abs(p.gap - 0.0001) < 2e-5
    # another instance is executing (in_flight > count): the next arrival is expected soon
    until = p.hold_until(last, oldest=last, count=1, in_flight=4, queued=1)
    assert until is not None and abs(until - (last + 2 * p.gap)) < 1e-9
    # arrivals went quiet (more than 2 gaps since the last): stop waiting
    assert p.hold_until(last + 0.0005, oldest=last, count=1, in_flight=4, queued=1) is None


def test_slow_arrivals_do_not_hold():
    p = DispatchPolicy(D, adaptive=True)
    t = 1.0
    for _ in range(10):  # arrivals every 10 ms, window 2 ms
        p.on_arrival(t)
        t += 0.01
    last = t - 0.01
    assert p.hold_until(last, oldest=last, count=1, in_flight=3, queued=1) is None


def test_window_is_an_upper_bound_in_adaptive_mode():
    p = DispatchPolicy(D, adaptive=True)
    p.on_answered(1.0, 10)
    p.on_arrival(1.0)
    assert p.hold_until(1.0 + D, oldest=1.0, count=1, in_flight=1, queued=1) is None


# -- through the batcher ---------------------------------------------------------------


async def test_full_batch_dispatches_without_waiting_for_the_window():
    # a 60 s fixed window: only a full batch can explain a prompt answer
    spec = make_spec(
        max_batch_size=4, batching=batching(max_queue_delay_us=60_000_000, adaptive_delay=False)
    )
    model = TestModel(spec)
    b = await started(model)
    results = await asyncio.gather(*submit_all(b, [req(float(i)) for i in range(1, 5)]))
    assert len(results) == 4 and model.sizes == [4]
    await b.stop()


async def test_preferred_batch_size_dispatches_at_once_and_cuts_there():
    spec = make_spec(
        max_batch_size=8,
        batching=batching(
            max_queue_delay_us=60_000_000, adaptive_delay=False, preferred_batch_sizes=(2,)
        ),
    )
    model = TestModel(spec)
    b = await started(model)
    tasks = submit_all(b, [req(1.0), req(2.0), req(3.0)])
    await until(lambda: len(model.calls) == 1)
    assert model.tag_batches == [[1.0, 2.0]]  # cut at the preferred size 2
    await asyncio.gather(*tasks[:2])
    assert not tasks[2].done()  # waits in its window for a fuller batch
    await b.stop()  # draining dispatches it without waiting
    await tasks[2]
    assert model.sizes == [2, 1]


async def test_max_queue_delay_bounds_the_wait():
    spec = make_spec(batching=batching(max_queue_delay_us=100_000, adaptive_delay=False))
    model = TestModel(spec)
    b = await started(model)
    t0 = time.monotonic()
    await b.submit(req(1.0))
    waited = time.monotonic() - t0
    assert 0.09 <= waited < 10.0  # held for its 100 ms window, then dispatched alone
    assert model.sizes == [1]
    await b.stop()


async def test_adaptive_lone_request_does_not_wait_for_the_window():
    spec = make_spec(batching=batching(max_queue_delay_us=60_000_000))
    model = TestModel(spec)
    b = await started(model)
    for i in range(5):  # concurrency 1: each answer arrives long before 60 s
        result = await asyncio.wait_for(b.submit(req(float(i + 1))), 10)
        assert result.outputs["OUTPUT0"][0, 0] == 2.0 * (i + 1)
    assert model.sizes == [1] * 5
    await b.stop()


async def test_adaptive_waits_for_returning_clients():
    # 4 closed-loop clients with different think times: after the first round the
    # batch is held until all 4 are back (never 60 s: each arrival re-evaluates).
    spec = make_spec(batching=batching(max_queue_delay_us=60_000_000))
    model = TestModel(spec)
    b = await started(model)

    async def client(k: int):
        for _ in range(4):
            await b.submit(req(float(k)))
            await asyncio.sleep(0.005 * k)

    await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(1, 5))), 15)
    assert model.sizes == [4, 4, 4, 4]
    await b.stop()


async def test_busy_instance_accumulates_and_stages_a_full_batch():
    spec = make_spec(max_batch_size=16, batching=batching(max_queue_delay_us=60_000_000))
    model = TestModel(spec)
    b = await started(model)
    held = await hold_instance(b, model)  # alone: dispatched at once (adaptive)
    rest = submit_all(b, [req(float(i)) for i in range(1, 21)])
    # 16 form a complete batch, staged on the busy instance; 4 wait in the queue
    await until(lambda: b.queue_depth == 4)
    model.gate.set()
    await asyncio.gather(held, *rest[:16])
    assert model.sizes == [1, 16]
    assert model.tag_batches[1] == [float(i) for i in range(1, 17)]
    # the 17 answered clients are expected back: the 4 are held for them (bounded by
    # the window); stopping drains at once
    assert b.queue_depth == 4
    await b.stop()
    await asyncio.gather(*rest[16:])
    assert model.sizes == [1, 16, 4]


async def test_no_waiting_when_window_zero_even_if_busy_later():
    model = TestModel(make_spec(batching=batching()))
    b = await started(model)
    held = await hold_instance(b, model)
    tasks = submit_all(b, [req(1.0), req(2.0), req(3.0)])
    await until(lambda: b.queue_depth == 3)
    model.gate.set()
    await asyncio.gather(held, *tasks)
    assert model.sizes == [1, 3]
    await b.stop()


def test_clients_that_never_come_back_are_forgotten_after_one_window():
    """31 of 32 clients leave (a stream closes): the one that stays waits at most one
    window once, not on every request."""
    p = DispatchPolicy(D, adaptive=True)
    p.on_answered(1.0, 32)
    t = 1.0001
    p.on_arrival(t)  # the client that stays
    assert p.hold_until(t, oldest=t, count=1, in_flight=1, queued=1) == t + D
    assert p.hold_until(t + D, oldest=t, count=1, in_flight=1, queued=1) is None  # window end
    assert p.returning == 0
    for _ in range(5):  # answered at once from now on, however fast it comes back
        p.on_answered(t + D, 1)
        t += D + 0.0001
        p.on_arrival(t)
        assert p.hold_until(t, oldest=t, count=1, in_flight=1, queued=1) is None


async def test_a_client_left_alone_after_a_burst_is_not_held_on_every_request():
    """Batcher level: after 8 concurrent clients, one keeps sending one request at a
    time. At most its first request waits (for the others to come back); every later
    one is answered inside ``submit``, never waiting on a timer or a worker."""

    model, b = await started_inline(max_queue_delay_us=300_000)
    await asyncio.gather(*(b.submit(req(float(i))) for i in range(10, 18)))
    await b.submit(req(100.0))  # may be held: 8 clients were expected back
    for i in range(20):
        result = answered_without_waiting(b.submit(req(200.0 + i)))
        assert result is not None, f"request {i} after the burst was held"
    assert model.tag_batches[-20:] == [[200.0 + i] for i in range(20)]
    await b.stop()


def test_a_pipelined_request_is_never_alone():
    """A lone request from a caller that sends without waiting (a busy stream) is held
    like any other under load (arrival rate, rule 6); from other callers it is not."""
    p = DispatchPolicy(D, adaptive=True)
    t = 1.0
    for _ in range(8):  # arrivals every 0.2 ms
        p.on_arrival(t)
        t += 0.0002
    p.on_arrival(t)
    assert p.hold_until(t, oldest=t, count=1, in_flight=1, queued=1) is None
    held = p.hold_until(t, oldest=t, count=1, in_flight=1, queued=1, pipelined=True)
    assert held is not None and t < held <= t + D
    # quiet for two gaps: the next request is not coming soon, dispatch
    later = t + 2 * p.gap + 1e-6
    assert p.hold_until(later, oldest=t, count=1, in_flight=1, queued=1, pipelined=True) is None


async def test_pipelined_requests_arriving_one_by_one_share_a_batch():
    """Batcher level: the head request's pipelined flag reaches the window. A lone
    request from an ordinary caller runs at once; one from a pipelining caller waits
    for the next, and both run in one batch."""

    # 20 requests one at a time: a steady arrival rate for the window to go by.
    model, b = await started_inline(max_queue_delay_us=200_000, warm=20)
    assert answered_without_waiting(b.submit(req(1.0))) is not None
    first = asyncio.ensure_future(b.submit(req(2.0, pipelined=True)))
    for _ in range(3):
        await asyncio.sleep(0)  # its own pass ran and held it
    assert not first.done() and b.queue_depth == 1
    second = asyncio.ensure_future(b.submit(req(3.0, pipelined=True)))
    await asyncio.gather(first, second)
    assert model.tag_batches[-2:] == [[1.0], [2.0, 3.0]]
    await b.stop()
