"""``batchwire drift profile``: a version's reference profile from an .npz of reference data."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from testsupport import write_python_model
from typer.testing import CliRunner, Result

from batchwire.examples.drift_reference import reference_data
from batchwire.examples.export import export_example
from batchwire.examples.reference import reference_outputs
from batchwire.server.drift_cli import drift_app
from batchwire.telemetry.drift_profile import PROFILE_FILE, build_profile, load_profile

ITEMS = 300  # not a multiple of mlp's max_batch_size (64): the last chunk is short


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp and text exported; mlp also has a version 2 folder (the same model file)."""
    root = tmp_path_factory.mktemp("drift-repo")
    export_example(root, "mlp")
    export_example(root, "text")
    shutil.copytree(root / "mlp" / "1", root / "mlp" / "2")
    return root


def run(repository: Path, *args: str) -> Result:
    return CliRunner().invoke(
        drift_app, ["profile", "--model-repository", str(repository), *args], catch_exceptions=False
    )


def save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_profile_runs_the_model_for_missing_outputs(repository: Path, tmp_path: Path) -> None:
    inputs, _ = reference_data("mlp", ITEMS, seed=3)
    data = save(tmp_path / "mlp.npz", **inputs)
    result = run(repository, "--model", "mlp", "--data", str(data), "--class-scores", "OUTPUT__0")
    assert result.exit_code == 0, result.output
    path = repository / "mlp" / "2" / PROFILE_FILE  # the highest version folder
    assert result.stdout.splitlines() == [
        f"wrote {path}: model 'mlp' version 2, {ITEMS} reference items, 10 bins",
        "  input INPUT__0: 64 features",
        "  output OUTPUT__0: top-1 frequencies of 10 classes",
    ]
    expected = build_profile(inputs, reference_outputs("mlp", inputs), class_scores=["OUTPUT__0"])
    assert load_profile(path) == expected


def test_profile_of_a_version_the_policy_does_not_serve(repository: Path, tmp_path: Path) -> None:
    inputs, _ = reference_data("mlp", 100, seed=7)
    data = save(tmp_path / "mlp.npz", **inputs)
    result = run(
        repository, "--model", "mlp", "--version", "1", "--data", str(data),
        "--class-scores", "OUTPUT__0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    path = repository / "mlp" / "1" / PROFILE_FILE
    assert result.stdout.startswith(f"wrote {path}: model 'mlp' version 1, 100 reference items")
    expected = build_profile(inputs, reference_outputs("mlp", inputs), class_scores=["OUTPUT__0"])
    assert load_profile(path) == expected


def test_profile_options_version_bins_max_features_and_output(
    repository: Path, tmp_path: Path
) -> None:
    inputs, outputs = reference_data("mlp", ITEMS, seed=4)
    data = save(tmp_path / "mlp.npz", **inputs, **outputs)
    target = tmp_path / "out.json"
    result = run(
        repository,
        "--model", "mlp", "--version", "1", "--data", str(data), "--bins", "4",
        "--max-features", "32", "--output", str(target),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "  input INPUT__0: pooled (one feature)",
        "  output OUTPUT__0: 10 features",
    ]
    assert load_profile(target) == build_profile(inputs, outputs, bins=4, max_features=32)


def test_profile_pools_variable_shapes_with_the_outputs_given(
    repository: Path, tmp_path: Path
) -> None:
    inputs, outputs = reference_data("text", ITEMS, seed=5)
    data = save(tmp_path / "text.npz", **inputs, **outputs)
    result = run(repository, "--model", "text", "--data", str(data))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "  input TOKENS: pooled (one feature)",
        "  output EMBEDDING: 32 features",
        "  output TOKEN_NORMS: pooled (one feature)",
    ]
    expected = build_profile(inputs, outputs, pooled=["TOKENS", "TOKEN_NORMS"])
    assert load_profile(repository / "text" / "1" / PROFILE_FILE) == expected


def test_profile_errors_exit_2_naming_expected_and_got(repository: Path, tmp_path: Path) -> None:
    inputs, outputs = reference_data("mlp", 20, seed=6)
    x = inputs["INPUT__0"]
    tokens = reference_data("text", 20, seed=6)[0]
    fixed = {"INPUT__0": x}
    cases = [
        (["--model", "nope"], fixed, r"model 'nope' in .*: .*model folder not found"),
        (
            ["--model", "mlp", "--version", "3"],
            fixed,
            "model 'mlp' has no version 3; expected one of 1, 2",
        ),
        (
            ["--model", "mlp"],
            {"X": x},
            r"array\(s\) X name no tensor of model 'mlp'; "
            "expected inputs INPUT__0 and outputs OUTPUT__0",
        ),
        (
            ["--model", "mlp"],
            {"OUTPUT__0": outputs["OUTPUT__0"]},
            r"expected an array for input\(s\) INPUT__0 of model 'mlp', got only OUTPUT__0",
        ),
        (
            ["--model", "mlp"],
            {"INPUT__0": x[:, :63]},
            r"INPUT__0 in .*: expected shape \(20, 64\) "
            r"\(N items, then the config dims \[64\]\), got \(20, 63\)",
        ),
        (
            ["--model", "mlp"],
            {"INPUT__0": x.astype(np.float64)},
            r"INPUT__0 in .*: expected float32 \(FP32.*\), got float64",
        ),
        (
            ["--model", "mlp"],
            {"INPUT__0": x, "OUTPUT__0": outputs["OUTPUT__0"][:10]},
            "expected the same number N >= 1 of items in every array, "
            "got INPUT__0: 20, OUTPUT__0: 10",
        ),
        (
            ["--model", "mlp", "--class-scores", "INPUT__0"],
            fixed,
            r"--class-scores INPUT__0: expected outputs of model 'mlp' \(OUTPUT__0\)",
        ),
        (
            ["--model", "text"],
            tokens,
            r"input\(s\) TOKENS of model 'text' have variable dims, .* "
            r"expected arrays for output\(s\) EMBEDDING, TOKEN_NORMS in it",
        ),
    ]
    before = sorted(repository.glob(f"*/*/{PROFILE_FILE}"))
    for i, (args, arrays, message) in enumerate(cases):
        data = save(tmp_path / f"case{i}.npz", **arrays)
        result = run(repository, *args, "--data", str(data))
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("batchwire: "), result.stderr
        assert re.search(message, lines[0]), (message, lines[0])
    assert sorted(repository.glob(f"*/*/{PROFILE_FILE}")) == before  # nothing written


def test_profile_refuses_files_that_are_not_npz(repository: Path, tmp_path: Path) -> None:
    text = tmp_path / "data.txt"
    text.write_text("not numpy")
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    for path, found in (
        (text, "got: "),
        (single, "got a single ndarray"),
        (tmp_path / "none.npz", "got: "),
    ):
        result = run(repository, "--model", "mlp", "--data", str(path))
        assert result.exit_code == 2
        assert (
            f"{path}: expected an .npz file of named arrays (numpy.savez), {found}" in result.stderr
        )
    missing_repo = run(tmp_path / "nothing", "--model", "mlp", "--data", str(text))
    assert missing_repo.exit_code == 2
    assert "expected a model repository folder, found none" in missing_repo.stderr
    bins = run(repository, "--model", "mlp", "--data", str(text), "--bins", "1")
    assert bins.exit_code == 2 and "--bins" in bins.stderr


UNBATCHED_CONFIG = """
name: "unbatched"
backend: "python"
max_batch_size: 0
input { name: "X" data_type: TYPE_FP32 dims: [ 3 ] }
output { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] }
"""

UNBATCHED_SOURCE = """
class BatchwireModel:
    def load(self, spec, device, instance_index):
        pass

    def execute(self, inputs):
        x = inputs["X"]
        if tuple(x.shape) != (3,):
            raise ValueError(f"expected one item of shape (3,), got {tuple(x.shape)}")
        if float(x[0]) > 100:
            raise RuntimeError("too large")
        return {"Y": x * 2}
"""


def test_a_model_without_batching_runs_one_item_at_a_time(tmp_path: Path) -> None:
    write_python_model(tmp_path, "unbatched", UNBATCHED_CONFIG, UNBATCHED_SOURCE)
    x = np.random.default_rng(8).standard_normal((50, 3)).astype(np.float32)
    data = save(tmp_path / "x.npz", X=x)
    result = run(tmp_path, "--model", "unbatched", "--data", str(data), "--bins", "5")
    assert result.exit_code == 0, result.output
    profile = load_profile(tmp_path / "unbatched" / "1" / PROFILE_FILE)
    assert profile == build_profile({"X": x}, {"Y": x * 2}, bins=5)
    x[7, 0] = 1000.0
    failing = save(tmp_path / "failing.npz", X=x)
    result = run(tmp_path, "--model", "unbatched", "--data", str(failing))
    assert result.exit_code == 2
    assert result.stderr == (
        "batchwire: model 'unbatched' version 1 failed on reference items 7..7: too large\n"
    )
