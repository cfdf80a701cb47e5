"""The built-in examples: export, load through the repository, compare with the reference."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from batchwire.batching import resolve_devices
from batchwire.examples import (
    EXAMPLE_NAMES,
    build_model,
    config_text,
    export_examples,
    reference_outputs,
    sample_inputs,
)
from batchwire.server.repository import ModelRepository

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module")
def repo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    started = time.perf_counter()
    assert export_examples(root) == list(EXAMPLE_NAMES)
    assert time.perf_counter() - started < 10  # exports must stay fast (tests, server start)
    return root


def _run(root: Path, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    repo = ModelRepository(root)
    source = repo.discover_model(name).versions[0]
    device = resolve_devices(source.spec)[0]
    runner = repo.load(source).create_runner(device, 0)
    out = runner({k: torch.from_numpy(v).to(device) for k, v in inputs.items()})
    return {k: v.cpu().numpy() for k, v in out.items()}


def test_export_layout_and_specs(repo_root: Path) -> None:
    entries = {e.name: e for e in ModelRepository(repo_root).discover()}
    assert sorted(entries) == sorted(EXAMPLE_NAMES)
    for name, entry in entries.items():
        assert entry.ok, entry.error
        assert (repo_root / name / "config.pbtxt").read_text() == config_text(name)
        assert (repo_root / name / "1" / "model.pt").is_file()
        spec = entry.versions[0].spec
        assert spec.platform == "pytorch_libtorch"
        assert spec.batching is not None
    assert entries["mlp"].versions[0].spec.max_batch_size == 64
    assert entries["cnn"].versions[0].spec.batching.max_queue_delay_us == 5000
    text = entries["text"].versions[0].spec
    assert text.inputs[0].allow_ragged_batch and text.inputs[0].dims == (-1,)
    assert text.batching.ragged_pad_value == 0.0


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_served_outputs_match_reference(repo_root: Path, name: str) -> None:
    inputs = sample_inputs(name, batch_size=3, seed=7)
    served = _run(repo_root, name, inputs)
    expected = reference_outputs(name, inputs)
    assert list(served) == list(expected)
    for key, value in expected.items():
        assert served[key].dtype == np.float32
        np.testing.assert_allclose(served[key], value, rtol=1e-5, atol=1e-6)


def test_null_returns_zeros_and_outputs_are_deterministic(repo_root: Path, tmp_path: Path) -> None:
    inputs = sample_inputs("null", batch_size=5)
    assert not _run(repo_root, "null", inputs)["OUTPUT__0"].any()
    export_examples(tmp_path, ["mlp"])
    again = sample_inputs("mlp", batch_size=4, seed=1)
    first = _run(repo_root, "mlp", again)["OUTPUT__0"]
    second = _run(tmp_path, "mlp", again)["OUTPUT__0"]
    assert first.tobytes() == second.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp"]


def test_builds_are_seeded() -> None:
    a, b = build_model("cnn").state_dict(), build_model("cnn").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_example_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no example model 'resnet'"):
        export_examples(tmp_path, ["mlp", "resnet"])
    assert not any(tmp_path.iterdir())  # nothing written when a name is wrong
