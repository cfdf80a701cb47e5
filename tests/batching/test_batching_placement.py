"""Placement: inline vs worker thread, and intra-op threads, from measured batch costs."""

from __future__ import annotations

import pytest

from batchwire.batching.placement import (
    DEFAULT_PARALLEL_ABOVE_US,
    FIRST_PROBE,
    PROBE_EVERY,
    PROBE_LIMIT,
    Placement,
)

US = 1000  # ns


def probe_after(placement: Placement, batches: int) -> list[bool]:
    return [placement.run_inline() for _ in range(batches)]


def test_first_batches_go_to_the_worker_then_a_probe_runs_inline() -> None:
    placement = Placement(500, 2, adaptive=True)
    choices = probe_after(placement, FIRST_PROBE - 1)
    assert choices == [False] * (FIRST_PROBE - 1)
    # Nothing measured on the worker yet: no probe (the model may be slow).
    assert placement.run_inline() is False
    placement.record_worker(300 * US)
    assert placement.run_inline() is True  # the probe
    placement.record_inline(120 * US)
    assert placement.inline_ns == 120 * US
    assert all(probe_after(placement, 10))


def test_inline_cost_above_the_threshold_sends_batches_back_to_the_worker() -> None:
    placement = Placement(500, 1, adaptive=True)
    placement.record_worker(200 * US)
    probe_after(placement, FIRST_PROBE - 1)
    assert placement.run_inline() is True
    placement.record_inline(100 * US)
    inline_batches = 0
    while placement.run_inline():  # the model slows down (bigger batches)
        placement.record_inline(2000 * US)
        inline_batches += 1
        assert inline_batches < 5
    assert placement.inline_ns > 500 * US
    assert not any(probe_after(placement, PROBE_EVERY - 2))


def test_probes_repeat_every_probe_every_batches_and_a_probe_replaces_the_estimate() -> None:
    placement = Placement(500, 1, adaptive=True)
    placement.record_worker(400 * US)
    probe_after(placement, FIRST_PROBE - 1)
    assert placement.run_inline()
    placement.record_inline(900 * US)  # probe too slow
    choices = probe_after(placement, PROBE_EVERY)
    assert choices == [False] * (PROBE_EVERY - 1) + [True]
    placement.record_inline(150 * US)  # replaces 900, not averaged with it
    assert placement.inline_ns == 150 * US
    assert placement.run_inline()


def test_no_probe_while_the_worker_cost_is_far_above_the_threshold() -> None:
    placement = Placement(500, 1, adaptive=True)
    placement.record_worker(PROBE_LIMIT * 500 * US + 1)
    assert not any(probe_after(placement, 3 * PROBE_EVERY))


def test_zero_threshold_never_runs_inline() -> None:
    placement = Placement(0, 1, adaptive=True)
    placement.record_worker(1 * US)
    assert not any(probe_after(placement, 3 * PROBE_EVERY))


def test_adaptive_threads_start_narrow_and_switch_with_hysteresis() -> None:
    placement = Placement(0, 4, adaptive=True)
    assert placement.worker_threads() == 1  # nothing measured
    placement.record_worker(DEFAULT_PARALLEL_ABOVE_US * US // 2)
    assert placement.worker_threads() == 1
    placement.worker_ns = DEFAULT_PARALLEL_ABOVE_US * US
    assert placement.worker_threads() == 4
    # Wide batches run faster; the choice holds until they are 4x below the bar.
    placement.worker_ns = DEFAULT_PARALLEL_ABOVE_US * US / 3
    assert placement.worker_threads() == 4
    placement.worker_ns = DEFAULT_PARALLEL_ABOVE_US * US / 5
    assert placement.worker_threads() == 1


def test_explicit_threads_are_always_used() -> None:
    placement = Placement(0, 3, adaptive=False)
    assert placement.worker_threads() == 3
    placement.record_worker(1 * US)
    assert placement.worker_threads() == 3


def test_costs_are_ewmas() -> None:
    placement = Placement(500, 1, adaptive=True)
    placement.record_worker(400 * US)
    placement.record_worker(800 * US)
    assert placement.worker_ns == pytest.approx(500 * US)


@pytest.mark.parametrize(("inline", "threads"), [(-1, 1), (100, 0)])
def test_invalid_arguments_are_refused(inline: int, threads: int) -> None:
    with pytest.raises(ValueError):
        Placement(inline, threads, adaptive=True)
