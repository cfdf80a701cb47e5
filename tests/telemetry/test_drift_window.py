"""Drift windows: PSI, counting chunks, the request and time bounds, states, threads."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from batchwire.telemetry.drift_profile import DriftProfile, build_profile, count_bins
from batchwire.telemetry.drift_window import DEFAULT_THRESHOLDS, DriftWindow, psi


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_psi_equals_the_hand_computed_value() -> None:
    # a = (0.75, 0.25) against e = (0.5, 0.5): 0.25 ln 1.5 - 0.25 ln 0.5 = 0.25 ln 3.
    got = psi(np.array([[0.5, 0.5]]), np.array([[3, 1]]))
    assert got.tolist() == [pytest.approx(0.25 * math.log(3), rel=1e-15)]
    assert got[0] == pytest.approx(0.27465307216702745, rel=1e-15)


def test_psi_floors_proportions_at_epsilon_and_gives_nan_for_empty_rows() -> None:
    expected = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.5, 0.5, 0.0]])
    counts = np.array([[1, 1, 0], [0, 0, 0], [5, 5, 0]])
    got = psi(expected, counts, epsilon=1e-4)
    # Row 0: a = (.5, .5, 0) -> (.5, .5, 1e-4); e = (1, 1e-4, 1e-4).
    row0 = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert got[0] == pytest.approx(row0, rel=1e-12)
    assert math.isnan(got[1])
    assert got[2] == 0.0  # the same proportions; the bin empty on both sides adds 0
    with pytest.raises(ValueError, match=r"same \(F, B\), got \(1, 2\) and \(1, 3\)"):
        psi(np.array([[0.5, 0.5]]), np.array([[1, 1, 1]]))


FEATURES = 8


def reference_profile() -> DriftProfile:
    rng = np.random.default_rng(1)
    return build_profile({"X": rng.standard_normal((4096, FEATURES))}, {})


def test_psi_stays_low_for_reference_like_data_and_rises_only_for_the_shifted_feature() -> None:
    profile = reference_profile()
    live = np.random.default_rng(2).standard_normal((3000, FEATURES))
    same = DriftWindow(profile)
    same.add({"X": [live[:1000], live[1000:]]}, requests=2)
    drift = same.snapshot()["X"]
    assert drift.items == 3000 and drift.values == 3000 * FEATURES
    assert np.all(drift.psi < 0.1), drift.psi
    assert drift.state == "ok"

    shifted = live.copy()
    shifted[:, 3] += 1.0  # one standard deviation
    moved = DriftWindow(profile)
    moved.add({"X": [shifted]}, requests=1)
    drift = moved.snapshot()["X"]
    assert drift.psi[3] > 0.25, drift.psi
    assert np.all(np.delete(drift.psi, 3) < 0.1), drift.psi
    assert drift.state == "alert"
    assert moved.states() == {"X": "alert"}


def test_states_follow_the_thresholds_and_min_items() -> None:
    profile = build_profile({"X": np.arange(100.0)[:, None]}, {}, bins=2)  # edge 49.5
    assert profile.tensors["X"].expected.tolist() == [[0.5, 0.5]]
    window = DriftWindow(profile, thresholds=(0.1, 0.3), min_items=10)

    def state_after(low: int, high: int) -> tuple[str, float]:
        window_ = DriftWindow(profile, thresholds=(0.1, 0.3), min_items=10)
        values = np.array([0.0] * low + [99.0] * high)[:, None]
        window_.add({"X": [values]}, requests=1)
        drift = window_.snapshot()["X"]
        return drift.state, float(drift.psi[0])

    # PSI of (a, 1 - a) against (0.5, 0.5) is (a - 0.5) ln(a / (1 - a)): 0 at 5/5,
    # 0.1 ln 1.5 = 0.0405 at 6/4, 0.2 ln(7/3) = 0.1695 at 7/3, 0.3 ln 4 = 0.4159 at 8/2.
    assert state_after(5, 5) == ("ok", 0.0)
    state, value = state_after(6, 4)
    assert state == "ok" and value == pytest.approx(0.1 * math.log(1.5), rel=1e-12)
    state, value = state_after(7, 3)
    assert state == "warning" and value == pytest.approx(0.2 * math.log(7 / 3), rel=1e-12)
    state, value = state_after(8, 2)
    assert state == "alert" and value == pytest.approx(0.3 * math.log(4), rel=1e-12)
    window.add({"X": [np.zeros((9, 1))]}, requests=1)  # 9 items < min_items
    assert window.snapshot()["X"].state == "insufficient"
    assert DEFAULT_THRESHOLDS == (0.1, 0.25)


def test_nonfinite_and_out_of_range_ratios_are_exact() -> None:
    profile = build_profile({"X": np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]])}, {}, bins=2)
    window = DriftWindow(profile, min_items=0)
    live = np.array([[np.nan, 10.0], [-1.0, np.inf], [2.0, 31.0], [0.5, 25.0]])
    window.add({"X": [live[:2]]}, requests=1)
    window.add({"X": [live[2:]]}, requests=1)
    drift = window.snapshot()["X"]
    assert drift.values == 8
    assert drift.nonfinite_ratio == 2 / 8
    assert drift.out_of_range_ratio == 2 / 6  # -1.0 below 0.0, 31.0 above 30.0; of 6 finite
    assert drift.counts.tolist() == [[2, 1], [1, 2]]  # edges 1.0 and 20.0


def chunk(value: float) -> dict[str, list[np.ndarray]]:
    return {"X": [np.full((1, FEATURES), value)]}


def test_the_window_keeps_the_newest_chunks_within_window_requests() -> None:
    profile = reference_profile()
    window = DriftWindow(profile, window_requests=3, min_items=0)
    values = [-3.0, -0.5, 0.5, 3.0]
    window.add(chunk(values[0]), requests=2)
    window.add(chunk(values[1]), requests=2)  # 4 > 3: the first chunk goes
    assert window.requests == 2
    window.add(chunk(values[2]), requests=1)
    assert window.requests == 3
    counts = window.snapshot()["X"].counts
    both = np.full((2, FEATURES), values[1])
    both[1] = values[2]
    assert np.array_equal(counts, count_bins(profile.tensors["X"], both)[0])
    window.add(chunk(values[3]), requests=5)  # alone above the bound: kept alone
    assert window.requests == 5
    drift = window.snapshot()["X"]
    assert drift.items == 1
    assert np.array_equal(
        drift.counts, count_bins(profile.tensors["X"], chunk(values[3])["X"][0])[0]
    )


def test_the_window_drops_chunks_older_than_window_seconds() -> None:
    clock = FakeClock()
    window = DriftWindow(reference_profile(), window_seconds=10.0, clock=clock, min_items=0)
    window.add(chunk(0.0), requests=1)
    clock.now = 5.0
    window.add(chunk(1.0), requests=1)
    clock.now = 10.0  # the first chunk is exactly 10 s old: kept
    assert window.snapshot()["X"].items == 2
    clock.now = 10.5
    assert window.snapshot()["X"].items == 1 and window.requests == 1
    clock.now = 15.5
    drift = window.snapshot()["X"]
    assert window.requests == 0 and drift.items == 0 and drift.values == 0
    assert drift.counts.sum() == 0 and np.isnan(drift.psi).all()
    assert (drift.nonfinite_ratio, drift.out_of_range_ratio) == (0.0, 0.0)
    assert drift.state == "insufficient"


def test_add_counts_pooled_ragged_requests_and_skips_absent_or_unknown_tensors() -> None:
    rng = np.random.default_rng(4)
    profile = build_profile(
        {"TOK": rng.integers(1, 100, (500, 6)), "X": rng.standard_normal((500, 2))},
        {"Y": rng.standard_normal((500, 3))},
        class_scores=["Y"],
        pooled=["TOK"],
    )
    window = DriftWindow(profile, min_items=0)
    requests = [rng.integers(1, 100, (1, n)) for n in (3, 9, 1)]
    window.add({"TOK": requests, "OTHER": [np.zeros(3)]}, requests=3)
    snap = window.snapshot()
    flat = np.concatenate([r.ravel() for r in requests])
    assert snap["TOK"].items == 3 and snap["TOK"].values == 13
    assert np.array_equal(snap["TOK"].counts, count_bins(profile.tensors["TOK"], flat)[0])
    assert snap["X"].items == 0 and snap["Y"].items == 0
    assert window.requests == 3


def test_a_chunk_that_does_not_fit_raises_and_records_nothing() -> None:
    window = DriftWindow(reference_profile(), min_items=0)
    with pytest.raises(ValueError, match=r"tensor 'X': expected requests of one shape"):
        window.add({"X": [np.zeros((1, FEATURES)), np.zeros((1, 3))]}, requests=2)
    with pytest.raises(ValueError, match=r"tensor 'X': expected 8 element\(s\) per item"):
        window.add({"X": [np.zeros((2, 3))]}, requests=1)
    assert window.requests == 0 and window.snapshot()["X"].items == 0
    with pytest.raises(ValueError, match="requests must be >= 1, got 0"):
        window.add({"X": [np.zeros((1, FEATURES))]}, requests=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window_requests": 0}, "window_requests must be >= 1, got 0"),
        ({"window_seconds": 0.0}, "window_seconds must be a finite number > 0, got 0.0"),
        ({"thresholds": (0.3, 0.2)}, r"0 < warning <= alert, got \(0.3, 0.2\)"),
        ({"min_items": -1}, "min_items must be >= 0, got -1"),
    ],
)
def test_window_options_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftWindow(reference_profile(), **options)  # type: ignore[arg-type]


def test_concurrent_adds_and_snapshots_keep_exact_running_sums() -> None:
    profile = reference_profile()
    window = DriftWindow(profile, window_requests=10**6, min_items=0)
    rng = np.random.default_rng(9)
    chunks = [rng.standard_normal((16, FEATURES)) for _ in range(200)]
    done = threading.Event()
    seen: list[int] = []

    def scrape() -> None:
        while not done.is_set():
            drift = window.snapshot()["X"]
            assert drift.counts.sum() == drift.values  # a consistent snapshot
            seen.append(drift.items)

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for c in chunks:
            window.add({"X": [c]}, requests=1)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not reader.is_alive()
    assert seen == sorted(seen)  # items only grow: no snapshot saw a half-added chunk
    drift = window.snapshot()["X"]
    assert drift.items == 3200 and window.requests == 200
    assert np.array_equal(drift.counts, count_bins(profile.tensors["X"], np.concatenate(chunks))[0])
