"""The example models' drift reference data and profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batchwire.examples.drift_reference import (
    REFERENCE_ITEMS,
    example_profile,
    reference_data,
)
from batchwire.examples.export import export_example
from batchwire.examples.models import TEXT_VOCAB_SIZE
from batchwire.examples.reference import reference_outputs
from batchwire.server.repository import ModelRepository
from batchwire.telemetry.drift_profile import DriftProfile, check_profile
from batchwire.telemetry.drift_window import DriftWindow

LIVE_ITEMS = 3000


def test_reference_data_is_seeded_and_shaped_like_sample_inputs() -> None:
    inputs, outputs = reference_data("mlp", 100, seed=1)
    x = inputs["INPUT__0"]
    assert x.shape == (100, 64) and x.dtype == np.float32
    assert np.array_equal(x, np.random.default_rng(1).standard_normal((100, 64), dtype=np.float32))
    assert np.array_equal(outputs["OUTPUT__0"], reference_outputs("mlp", inputs)["OUTPUT__0"])
    tokens = reference_data("text", 100, seed=1)[0]["TOKENS"]
    assert tokens.shape == (100, 16) and tokens.dtype == np.int64
    assert tokens.min() >= 1 and tokens.max() < TEXT_VOCAB_SIZE
    again = reference_data("text", 100, seed=1)
    assert np.array_equal(again[0]["TOKENS"], tokens)
    with pytest.raises(ValueError, match="example 'cnn' has no drift reference data"):
        reference_data("cnn")
    with pytest.raises(KeyError, match="no example model 'resnet'"):
        reference_data("resnet")


@pytest.fixture(scope="module")
def profiles() -> dict[str, DriftProfile]:
    built = {name: example_profile(name) for name in ("mlp", "text")}
    return {name: profile for name, profile in built.items() if profile is not None}


def test_example_profiles_fit_the_exported_models(
    profiles: dict[str, DriftProfile], tmp_path: Path
) -> None:
    mlp, text = profiles["mlp"], profiles["text"]
    assert {n: (t.kind, len(t.features)) for n, t in mlp.tensors.items()} == {
        "INPUT__0": ("bins", 64),
        "OUTPUT__0": ("classes", 1),
    }
    assert mlp.tensors["OUTPUT__0"].classes == 10
    assert {n: (t.kind, t.features[:1]) for n, t in text.tensors.items()} == {
        "TOKENS": ("bins", ("*",)),
        "EMBEDDING": ("bins", ("0",)),
        "TOKEN_NORMS": ("bins", ("*",)),
    }
    assert len(text.tensors["EMBEDDING"].features) == 32
    assert mlp.reference_items == text.reference_items == REFERENCE_ITEMS
    repo = ModelRepository(tmp_path)
    for name, profile in profiles.items():
        export_example(tmp_path, name)
        spec = repo.discover_model(name).versions[0].spec
        assert check_profile(profile, spec) == []
    assert example_profile("mlp") == mlp  # seeded: the same profile every time
    assert example_profile("cnn") is None and example_profile("null") is None


def psi_of(
    profile: DriftProfile, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    window = DriftWindow(profile)
    window.add({name: [a] for name, a in {**inputs, **outputs}.items()}, requests=1)
    snapshot = window.snapshot()
    assert all(d.state != "insufficient" for d in snapshot.values())
    return {name: d.psi for name, d in snapshot.items()}


def test_mlp_psi_is_low_for_data_like_the_reference_and_high_for_a_shifted_feature(
    profiles: dict[str, DriftProfile],
) -> None:
    inputs, outputs = reference_data("mlp", LIVE_ITEMS, seed=99)
    same = psi_of(profiles["mlp"], inputs, outputs)
    assert np.all(same["INPUT__0"] < 0.1) and np.all(same["OUTPUT__0"] < 0.1), same
    shifted = {"INPUT__0": inputs["INPUT__0"].copy()}
    shifted["INPUT__0"][:, 17] += 1.0
    moved = psi_of(profiles["mlp"], shifted, reference_outputs("mlp", shifted))
    assert moved["INPUT__0"][17] > 0.25
    assert np.all(np.delete(moved["INPUT__0"], 17) < 0.1), moved["INPUT__0"]


def test_text_psi_is_low_for_data_like_the_reference_and_high_for_other_tokens(
    profiles: dict[str, DriftProfile],
) -> None:
    inputs, outputs = reference_data("text", LIVE_ITEMS, seed=99)
    same = psi_of(profiles["text"], inputs, outputs)
    assert all(np.all(values < 0.1) for values in same.values()), same
    rng = np.random.default_rng(98)
    low_ids = {"TOKENS": rng.integers(1, TEXT_VOCAB_SIZE // 2, size=(LIVE_ITEMS, 16))}
    moved = psi_of(profiles["text"], low_ids, reference_outputs("text", low_ids))
    assert moved["TOKENS"][0] > 0.25
