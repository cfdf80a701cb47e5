"""``batchwire infer`` against the local echo server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from echo_server import ECHO_INPUTS, ECHO_SHAPES
from typer.testing import CliRunner

from batchwire.clients.cli import VARIABLE_DIM_SIZE, build_app, concrete_shape, random_tensor
from batchwire.core.datatypes import NUMPY_DTYPES

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(build_app(), ["infer", *args])


def expected_shape(name: str, batch_size: int) -> list[int]:
    return [batch_size] + [3 if dim == 3 else VARIABLE_DIM_SIZE for dim in ECHO_SHAPES[name][1:]]


def test_random_inputs_every_datatype(echo_address: str) -> None:
    result = invoke("--model", "echo", "--random", "--url", echo_address, "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "model 'echo' version '1'" in result.stdout
    for name, datatype in ECHO_INPUTS.items():
        assert f"{name}  {datatype}  {expected_shape(name, 1)}" in result.stdout


def test_random_json_batch_size_and_output_filter(echo_address: str) -> None:
    result = invoke(
        "-m", "echo", "--random", "-u", f"grpc://{echo_address}", "-b", "4", "--json",
        "-o", "IN_INT64", "-o", "IN_BYTES", "-o", "IN_BF16",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    outputs = {out["name"]: out for out in document["outputs"]}
    assert sorted(outputs) == ["IN_BF16", "IN_BYTES", "IN_INT64"]
    assert document["model_name"] == "echo"
    for name, out in outputs.items():
        assert out["shape"] == expected_shape(name, 4)
        assert np.array(out["data"]).shape == tuple(out["shape"])
    ints = np.array(outputs["IN_INT64"]["data"])
    assert ints.min() >= 1 and ints.max() < 100  # valid token ids
    assert all(isinstance(s, str) and s.isalpha() for s in np.ravel(outputs["IN_BYTES"]["data"]))
    assert all(isinstance(v, float) for v in np.ravel(outputs["IN_BF16"]["data"]))


def test_unbatched_model_uses_fixed_dims(echo_address: str) -> None:
    result = invoke("--model", "fixed", "--random", "--url", echo_address, "-b", "5")
    assert result.exit_code == 0, result.output
    assert f"X  FP32  [2, {VARIABLE_DIM_SIZE}]" in result.stdout


def test_input_files(echo_address: str, tmp_path: Path) -> None:
    x = np.arange(6, dtype=np.float64).reshape(2, 3)  # sent as the declared FP32
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "s.npy", np.array(["hi", "yo"]))
    result = invoke(
        "--model", "echo", "--url", echo_address, "--json",
        "--input", f"IN_FP32={tmp_path / 'x.npy'}", "-i", f"IN_BYTES={tmp_path / 's.npy'}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    outputs = {out["name"]: out for out in json.loads(result.stdout)["outputs"]}
    assert outputs["IN_FP32"]["datatype"] == "FP32"
    assert outputs["IN_FP32"]["data"] == x.tolist()
    assert outputs["IN_BYTES"]["data"] == ["hi", "yo"]
    # --random fills in the inputs not given as files.
    result = invoke(
        "--model", "echo", "--url", echo_address, "--random",
        "--input", f"IN_FP32={tmp_path / 'x.npy'}",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "IN_FP32  FP32  [2, 3]" in result.stdout
    assert "IN_INT8  INT8  " in result.stdout


def test_errors_exit_non_zero(echo_address: str, tmp_path: Path) -> None:
    result = invoke("--model", "missing", "--random", "--url", echo_address)
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr
    assert "'missing' is not found" in result.stderr
    result = invoke("--model", "echo", "--random", "--url", "127.0.0.1:1", "--timeout", "5")
    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.stderr
    result = invoke("--model", "echo", "--url", echo_address)
    assert result.exit_code == 2
    assert "--random" in result.output
    result = invoke("--model", "echo", "--url", echo_address, "--input", "nofile")
    assert result.exit_code == 2
    result = invoke("--model", "echo", "--url", echo_address, "-i", f"X={tmp_path / 'no.npy'}")
    assert result.exit_code == 2
    np.save(tmp_path / "f.npy", np.array([1.5]))
    result = invoke(
        "--model", "echo", "--url", echo_address, "-i", f"IN_INT32={tmp_path / 'f.npy'}"
    )
    assert result.exit_code == 2
    assert "cannot send a float64 array as INT32" in result.stderr


@pytest.mark.parametrize("datatype", list(NUMPY_DTYPES))
def test_random_tensor(datatype: str) -> None:
    array = random_tensor(datatype, [2, 3], np.random.default_rng(0))
    assert array.shape == (2, 3)
    assert array.dtype == NUMPY_DTYPES[datatype]
    if array.dtype.kind in "iu" and datatype != "BF16":
        assert array.min() >= 1 and array.max() < 100


def test_concrete_shape() -> None:
    assert concrete_shape([-1, 64], batched=True, batch_size=4) == [4, 64]
    assert concrete_shape([-1, -1], batched=True, batch_size=1) == [1, VARIABLE_DIM_SIZE]
    assert concrete_shape([-1, 3], batched=False, batch_size=4) == [VARIABLE_DIM_SIZE, 3]


def test_module_entry_point(echo_address: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "batchwire.clients.cli", "infer", "--model", "fixed",
         "--random", "--url", echo_address],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "X  FP32  [2, 8]" in completed.stdout
