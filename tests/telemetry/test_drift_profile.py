"""Drift reference profiles: building, counting into bins, the JSON file, the model check."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchwire.core.spec import ModelSpec, TensorSpec
from batchwire.telemetry.drift_profile import (
    FORMAT,
    PROFILE_FILE,
    DriftProfile,
    ProfileError,
    TensorProfile,
    build_profile,
    check_profile,
    count_bins,
    load_profile,
    save_profile,
)


def naive_counts(profile: TensorProfile, items: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """count_bins written as the rule reads, one element at a time."""
    features = len(profile.features)
    bins = profile.expected.shape[1]
    counts = np.zeros((features, bins), dtype=np.int64)
    rows = [list(item.ravel()) for item in items]
    if profile.pooled:
        rows = [[v] for row in rows for v in row]
    values = nonfinite = outside = 0
    for row in rows:
        for f, v in enumerate(row):
            values += 1
            v = float(v)
            if not math.isfinite(v):
                nonfinite += 1
                continue
            b = sum(1 for e in profile.edges[f] if v > e)
            counts[f, b] += 1
            if v < profile.low[f] or v > profile.high[f]:
                outside += 1
    return counts, values, nonfinite, outside


def bins_profile(edges: list[list[float]], low: list[float], high: list[float]) -> TensorProfile:
    e = np.array(edges, dtype=np.float64)
    bins = e.shape[1] + 1
    features = tuple(str(i) for i in range(e.shape[0]))
    return TensorProfile(
        "X", "bins", features, e, np.full((len(features), bins), 1 / bins), low, high
    )


def test_count_bins_equals_a_per_element_loop_with_ties_duplicate_edges_and_nonfinite() -> None:
    rng = np.random.default_rng(7)
    # Duplicate edges (0, 0 and 2, 2, 2), a constant feature (all edges 1), integer-valued
    # data so that many values equal an edge exactly.
    profile = bins_profile(
        [[-1, 0, 0, 1, 2], [2, 2, 2, 3, 4], [1, 1, 1, 1, 1]],
        low=[-2.0, 1.0, 1.0],
        high=[3.0, 4.0, 1.0],
    )
    x = rng.integers(-3, 6, size=(500, 3)).astype(np.float64)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.02] = -np.inf
    x[::7, 1] += 0.5  # values between edges too
    counts, values, nonfinite, outside = count_bins(profile, x)
    expected = naive_counts(profile, x)
    assert counts.dtype == np.int64
    assert np.array_equal(counts, expected[0])
    assert (values, nonfinite, outside) == expected[1:]
    assert counts.sum() == values - nonfinite
    # The duplicate edges leave the bins between them empty.
    assert counts[0, 2] == 0 and counts[1, 1] == counts[1, 2] == 0
    assert counts[2, 1:5].sum() == 0


def test_count_bins_per_feature_takes_any_item_shape_with_the_element_count() -> None:
    rng = np.random.default_rng(3)
    profile = bins_profile([[-0.5, 0.5]] * 6, low=[-1.0] * 6, high=[1.0] * 6)
    x = rng.standard_normal((40, 2, 3))
    got = count_bins(profile, x)
    assert np.array_equal(got[0], naive_counts(profile, x)[0])
    assert got[1:] == naive_counts(profile, x)[1:]
    with pytest.raises(
        ValueError, match=r"tensor 'X': expected 6 element\(s\) per item .* \(40, 5\)"
    ):
        count_bins(profile, np.zeros((40, 5)))
    with pytest.raises(ValueError, match=r"expected numbers .* got <U1"):
        count_bins(profile, np.array([["a"] * 6]))
    empty = count_bins(profile, np.zeros((0, 6)))
    assert empty[1:] == (0, 0, 0) and empty[0].shape == (6, 3) and empty[0].sum() == 0


def test_pooled_tensors_count_every_element_into_one_feature_whatever_the_shape() -> None:
    edges = np.array([[10.0, 20.0, 30.0]])
    profile = TensorProfile(
        "T", "bins", ("*",), edges, np.full((1, 4), 0.25), np.array([5.0]), np.array([40.0])
    )
    assert profile.pooled
    flat = np.array([1, 10, 11, 20, 25, 30, 31, 45, 3], dtype=np.int64)
    counts, values, nonfinite, outside = count_bins(profile, flat)
    assert counts.tolist() == [[3, 2, 2, 2]]  # 1, 3, 10 | 11, 20 | 25, 30 | 31, 45
    assert (values, nonfinite, outside) == (9, 0, 3)  # 1, 3 below 5; 45 above 40
    assert np.array_equal(count_bins(profile, flat.reshape(3, 3))[0], counts)


def test_classes_count_the_first_argmax_of_finite_rows() -> None:
    profile = TensorProfile(
        "Y", "classes", ("top1",), np.zeros((0, 0)), np.full((1, 3), 1 / 3), [], []
    )
    assert profile.classes == 3
    scores = np.array(
        [
            [0.1, 0.9, 0.0],
            [2.0, 2.0, 1.0],  # a tie: the first maximum, class 0
            [0.0, 0.0, 5.0],
            [np.nan, 0.0, 9.0],  # non-finite: not counted
            [0.0, np.inf, 0.0],
            [-1.0, -3.0, -2.0],
        ],
        dtype=np.float32,
    )
    counts, values, nonfinite, outside = count_bins(profile, scores)
    assert counts.tolist() == [[2, 1, 1]]
    assert (values, nonfinite, outside) == (6, 2, 0)
    # Extra axes: every row along the last axis is one value.
    counts3, values3, _, _ = count_bins(profile, np.stack([scores, scores]))
    assert counts3.tolist() == [[4, 2, 2]] and values3 == 12
    with pytest.raises(ValueError, match=r"3 classes on the last axis, got shape \(6, 4\)"):
        count_bins(profile, np.zeros((6, 4)))


def test_build_profile_takes_quantile_edges_and_counts_the_reference_with_count_bins() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1000, 4)).astype(np.float32)
    x[:, 3] = np.round(x[:, 3])  # few distinct values: ties and duplicate edges
    x[5, 0] = np.nan
    built = build_profile({"X": x}, {}, bins=5)
    t = built.tensors["X"]
    assert (built.bins, built.reference_items) == (5, 1000)
    assert t.kind == "bins" and t.features == ("0", "1", "2", "3")
    for f in range(4):
        finite = x[:, f][np.isfinite(x[:, f])].astype(np.float64)
        assert np.array_equal(t.edges[f], np.quantile(finite, [0.2, 0.4, 0.6, 0.8]))
        assert t.low[f] == finite.min() and t.high[f] == finite.max()
        naive = naive_counts(t, x)[0][f]
        assert np.array_equal(t.expected[f], naive / naive.sum())
    assert np.all(np.diff(t.edges, axis=1) >= 0)
    assert len(set(t.edges[3].tolist())) < 4  # duplicates kept
    assert not t.edges.flags.writeable


def test_build_profile_pools_large_or_named_tensors_and_profiles_class_scores() -> None:
    rng = np.random.default_rng(2)
    inputs = {"A": rng.standard_normal((300, 8)), "B": rng.standard_normal((300, 5, 5))}
    outputs = {"P": rng.standard_normal((300, 4)), "Q": rng.standard_normal((300, 3))}
    built = build_profile(
        inputs, outputs, bins=4, class_scores=["P"], pooled=["Q"], max_features=10
    )
    assert {n: (t.kind, t.features[:2]) for n, t in built.tensors.items()} == {
        "A": ("bins", ("0", "1")),
        "B": ("bins", ("*",)),  # 25 elements > max_features
        "P": ("classes", ("top1",)),
        "Q": ("bins", ("*",)),
    }
    top = np.bincount(outputs["P"].argmax(axis=1), minlength=4)
    assert np.array_equal(built.tensors["P"].expected, (top / 300)[None])
    pooled = inputs["B"].ravel()
    assert np.array_equal(built.tensors["B"].edges[0], np.quantile(pooled, [0.25, 0.5, 0.75]))


@pytest.mark.parametrize(
    ("inputs", "outputs", "options", "message"),
    [
        (
            {"A": np.zeros((3, 2))},
            {"B": np.zeros((4, 2))},
            {},
            r"same item count N >= 1 .* A: 3, B: 4",
        ),
        ({"A": np.zeros((3, 2))}, {}, {"class_scores": ["A"]}, r"unknown tensor name\(s\) A"),
        ({"A": np.zeros((3, 2))}, {}, {"bins": 1}, r"bins must be >= 2, got 1"),
        ({"A": np.full((3, 2), np.nan)}, {}, {}, r"feature\(s\) 0, 1 have no finite value"),
        ({}, {}, {}, r"no tensors to profile"),
        ({"A": np.zeros((3, 0))}, {}, {}, r"no elements per item"),
    ],
)
def test_build_profile_refuses_what_it_cannot_profile(
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    options: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        build_profile(inputs, outputs, **options)


def sample_profile() -> DriftProfile:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 3)) * np.array([1.0, 1e-300, 1e10])
    x[:, 1] += 0.1 + 0.2  # floats whose repr is long
    scores = rng.standard_normal((200, 4))
    tokens = rng.integers(0, 50, size=(200, 7))
    return build_profile(
        {"X": x, "TOK": tokens}, {"Y": scores}, bins=6, class_scores=["Y"], pooled=["TOK"]
    )


def test_save_and_load_round_trip_every_float_exactly(tmp_path: Path) -> None:
    profile = sample_profile()
    path = tmp_path / PROFILE_FILE
    save_profile(profile, path)
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed
    loaded = load_profile(path)
    assert loaded == profile
    for name, t in profile.tensors.items():
        for field in ("edges", "expected", "low", "high"):
            assert getattr(loaded.tensors[name], field).tobytes() == getattr(t, field).tobytes()
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT == "batchwire-drift-profile/1"
    assert [t["name"] for t in doc["tensors"]] == ["X", "TOK", "Y"]
    assert doc["tensors"][2]["edges"] == [] and len(doc["tensors"][2]["expected"][0]) == 4


def mutate(doc: dict[str, Any], change: str) -> None:
    x = doc["tensors"][0]
    if change == "format":
        doc["format"] = "batchwire-drift-profile/9"
    elif change == "bins":
        del doc["bins"]
    elif change == "edges order":
        x["edges"][2][0], x["edges"][2][1] = x["edges"][2][1], x["edges"][2][0]
    elif change == "edges length":
        x["edges"][2] = x["edges"][2][:-1]
    elif change == "sum":
        x["expected"][0][0] += 0.5
    elif change == "negative":
        x["expected"][0][0] = -0.1
    elif change == "duplicate":
        doc["tensors"][1]["name"] = "X"
    elif change == "kind":
        x["kind"] = "histogram"
    elif change == "low above high":
        x["low"][2] = x["high"][2] + 1
    elif change == "string number":
        x["high"][0] = "1.0"
    elif change == "classes edges":
        doc["tensors"][2]["edges"] = [[0.0]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "format",
            r'"format": expected "batchwire-drift-profile/1", found "batchwire-drift-profile/9"',
        ),
        (
            "bins",
            r'top level: expected a "bins" field, found only format, reference_items, tensors',
        ),
        ("edges order", r"tensors\[0\] \('X'\)\.edges\[2\]: expected non-decreasing edges"),
        (
            "edges length",
            r"tensors\[0\] \('X'\)\.edges\[2\]: expected a list of 5 numbers, found a list of 4",
        ),
        ("sum", r"\.expected\[0\]: expected proportions summing to 1, found sum 1\.5"),
        ("negative", r"\.expected\[0\]\[0\]: expected a proportion >= 0, found -0\.1"),
        ("duplicate", r"tensors\[1\]\.name: expected a name not used before, found \"X\""),
        ("kind", r'\.kind: expected "bins" or "classes", found "histogram"'),
        ("low above high", r"\.low\[2\]: expected <= high"),
        ("string number", r"\.high\[0\]: expected a number, found \"1\.0\""),
        (
            "classes edges",
            r"tensors\[2\] \('Y'\)\.edges: expected \[\] for classes, found a list of 1",
        ),
    ],
)
def test_load_profile_names_the_file_the_place_the_expected_and_the_found(
    tmp_path: Path, change: str, message: str
) -> None:
    path = tmp_path / PROFILE_FILE
    save_profile(sample_profile(), path)
    doc = json.loads(path.read_text())
    mutate(doc, change)
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=message) as caught:
        load_profile(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


def test_load_profile_refuses_unreadable_files_and_non_finite_numbers(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    with pytest.raises(ProfileError, match=r"none\.json: cannot read the drift profile"):
        load_profile(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(
        ProfileError, match=r"bad\.json: expected a JSON drift profile, found invalid JSON"
    ):
        load_profile(bad)
    path = tmp_path / PROFILE_FILE
    save_profile(sample_profile(), path)
    text = path.read_text()
    first = json.loads(text)["tensors"][0]["low"][0]
    path.write_text(text.replace(repr(first), "NaN", 1))
    with pytest.raises(ProfileError, match=r"invalid JSON: NaN is not a number a profile may hold"):
        load_profile(path)
    path.write_text("[]")
    with pytest.raises(ProfileError, match=r"top level: expected an object, found a list of 0"):
        load_profile(path)


def spec(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> ModelSpec:
    return ModelSpec("m", "1", "pytorch_libtorch", 8, tuple(inputs), tuple(outputs))


def test_check_profile_lists_every_mismatch_with_the_model() -> None:
    rng = np.random.default_rng(1)
    built = build_profile(
        {
            "X": rng.standard_normal((50, 6)),
            "V": rng.standard_normal((50, 4)),
            "S": rng.standard_normal((50, 2)),
        },
        {
            "Y": rng.standard_normal((50, 3)),
            "Z": rng.standard_normal((50, 2)),
            "GONE": rng.standard_normal((50, 1)),
        },
        class_scores=["Y"],
        pooled=["Z"],
    )
    good = spec(
        [
            TensorSpec("X", "FP32", (2, 3)),
            TensorSpec("V", "FP32", (4,)),
            TensorSpec("S", "FP32", (2,)),
        ],
        [
            TensorSpec("Y", "FP32", (3,)),
            TensorSpec("Z", "FP32", (-1,)),
            TensorSpec("GONE", "FP64", (1,)),
        ],
    )
    assert check_profile(built, good) == []
    bad = spec(
        [
            TensorSpec("X", "FP32", (7,)),
            TensorSpec("V", "FP32", (-1,)),
            TensorSpec("S", "BYTES", (2,)),
        ],
        [TensorSpec("Y", "FP32", (4,)), TensorSpec("Z", "FP32", (-1, 5))],
    )
    assert check_profile(built, bad) == [
        "tensor 'X': expected 7 features (dims [7]), got 6",
        "tensor 'V': a profile of 4 features needs fixed dims, got [-1]; expected a pooled "
        "profile ('*') for a variable shape",
        "tensor 'S': BYTES values cannot be profiled",
        "tensor 'Y': expected dims ending in 3 (the profile's classes), got [4]",
        "tensor 'GONE': the model has no input or output of that name (inputs: X, V, S; "
        "outputs: Y, Z)",
    ]


def test_profiles_check_their_own_shapes() -> None:
    with pytest.raises(ValueError, match=r"tensor 'X': edges must be \(1, 2\), got \(1, 3\)"):
        TensorProfile("X", "bins", ("0",), np.zeros((1, 3)), np.full((1, 3), 1 / 3), [0.0], [1.0])
    t = TensorProfile("X", "bins", ("0",), np.zeros((1, 2)), np.full((1, 3), 1 / 3), [0.0], [1.0])
    with pytest.raises(ValueError, match=r"tensor 'X': 3 bins, expected 4"):
        DriftProfile({"X": t}, reference_items=1, bins=4)
