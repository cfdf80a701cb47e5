"""``batchwire loadtest`` on models outside the examples, through a real server.

The repository holds ``scaler`` (TorchScript, doubles an FP32 input of dims
[4]) and ``typed`` (python platform, one input per v2 datatype; IN_INT32 and
IN_BYTES have a variable dim). Requests are generated from the server's
metadata, or read from ``--input-data`` files.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from loadtest_helpers import (
    VARIABLE_INPUTS,
    run_loadtest,
    write_scaler,
    write_slo,
    write_typed,
)
from testsupport import ALL_DATATYPES, start_server

from batchwire.clients import InferenceClient
from batchwire.loadtest.inputs import InputSpecError, TensorSpec
from batchwire.loadtest.workloads import (
    ModelNotServedError,
    WorkloadOptions,
    fetch_model_inputs,
    parse_input_data_options,
    resolve_workloads,
)

if TYPE_CHECKING:
    from batchwire.server.app import ServerThread

# find_spec, not importorskip: importing locust would monkey-patch this test process.
if importlib.util.find_spec("locust") is None:
    pytest.skip(
        "Locust is not installed (pip install 'batchwire[loadtest]')", allow_module_level=True
    )
pytest.importorskip(
    "matplotlib", reason="matplotlib is not installed (pip install 'batchwire[loadtest]')"
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

#: Both models, with the sizes the variable dims need.
SHAPES = ("--shape", "IN_INT32:5", "--shape", "IN_BYTES:2")

SLO = """
version = 1
[defaults]
max_failure_ratio = 0.0
[models.scaler]
p99_ms = 5000
min_rps = 1
[models.typed]
p99_ms = 5000
min_rps = 1
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("any-model-repo")
    write_scaler(root)
    write_typed(root)
    return root


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[ServerThread]:
    """The repository served in this process (the load tests reach it with --host)."""
    srv = start_server(repository)
    yield srv
    srv.stop()


# Metadata -> workloads, in this process ----------------------------------------------


def test_the_inputs_come_from_the_metadata(server: ServerThread) -> None:
    with InferenceClient(server.address) as client:
        typed = fetch_model_inputs(client, "typed")
        scaler = fetch_model_inputs(client, "scaler")
    assert scaler.max_batch_size == 8 and scaler.inputs == (TensorSpec("X", "FP32", (4,)),)
    assert typed.max_batch_size == 4
    assert [(t.name, t.datatype) for t in typed.inputs] == [
        (f"IN_{datatype}", datatype) for datatype in ALL_DATATYPES
    ]
    assert {t.name for t in typed.inputs if t.variable} == {f"IN_{d}" for d in VARIABLE_INPUTS}


def test_what_the_server_refuses_is_named(server: ServerThread, tmp_path: Path) -> None:
    target = server.address
    with pytest.raises(ModelNotServedError) as caught:
        resolve_workloads(target, ["scaler", "scalr"])
    assert str(caught.value) == f"model 'scalr' is not served at {target}; served: scaler, typed"
    with pytest.raises(InputSpecError) as caught:
        resolve_workloads(target, ["typed"], WorkloadOptions(shapes={"IN_INT32": (5,)}))
    assert str(caught.value) == (
        "model 'typed' input 'IN_BYTES' has variable dims [-1]: give its shape with "
        "--shape IN_BYTES:N (N: the size to send)"
    )
    with pytest.raises(InputSpecError) as caught:
        resolve_workloads(target, ["scaler"], WorkloadOptions(shapes={"IN_INT32": (5,)}))
    assert str(caught.value) == (
        "--shape IN_INT32: no model of this run has an input 'IN_INT32' (inputs of 'scaler': X)"
    )
    data = tmp_path / "x.npz"
    np.savez(data, X=np.zeros((1, 4), np.float32))
    files = parse_input_data_options([str(data)])
    with pytest.raises(InputSpecError, match="names no model but the run loads 2 "):
        resolve_workloads(target, [], WorkloadOptions(input_data=files))
    # No models named: every ready model of the server.
    workloads = resolve_workloads(
        target, [], WorkloadOptions(shapes={"IN_INT32": (5,), "IN_BYTES": (2,)}, batch_size=2)
    )
    assert list(workloads) == ["scaler", "typed"]
    assert workloads["scaler"].description == "FP32 X [2, 4], random"


# The command, end to end ------------------------------------------------------------------


def test_a_model_outside_the_examples_is_loaded(repository: Path, tmp_path: Path) -> None:
    """The command starts its own server on --model-repository; random inputs, batch 2."""
    slo = write_slo(tmp_path, SLO)
    result = run_loadtest(
        tmp_path / "out",
        "--model-repository", str(repository),
        "--models", "scaler,typed",
        *SHAPES,
        "--batch-size", "2",
        "--slo", str(slo),
        "--users", "2",
        "--spawn-rate", "2",
        "--duration", "3s",
        "--warmup", "0s",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.output + result.logs
    assert "starting server" in result.stderr and "--model-repository" in result.stderr
    for model in ("scaler", "typed"):
        assert re.search(rf"^PASS {model} failure ratio 0% <= target 0%$", result.stdout, re.M)
        assert re.search(rf"^PASS {model} rps [\d.]+ req/s >= target 1 req/s$", result.stdout, re.M)
    _assert_all_succeeded(result.out, {"scaler", "typed"})
    index = json.loads((result.out / "workloads.json").read_text())["models"]
    assert index["scaler"] == {
        "description": "FP32 X [2, 4], random",
        "source": "random",
        "requests": "requests/0.bin",
        "count": 64,
    }
    assert "INT32 IN_INT32 [2, 5]" in index["typed"]["description"]
    assert "BYTES IN_BYTES [2, 2]" in index["typed"]["description"]
    assert "workload typed" in (result.out / "report.html").read_text()


def test_input_data_files_are_sent(server: ServerThread, tmp_path: Path) -> None:
    """--host, with a perf_analyzer JSON file for scaler and an .npz for typed."""
    scaler_json = tmp_path / "scaler.json"
    scaler_json.write_text(
        json.dumps(
            {
                "data": [
                    {"X": [1, 2, 3, 4]},
                    {"X": {"content": [0.5, 0.25, 0, -1], "shape": [4]}},
                ]
            }
        )
    )
    typed_npz = tmp_path / "typed.npz"
    np.savez(typed_npz, **_typed_arrays(batch=2))
    result = run_loadtest(
        tmp_path / "out",
        "--host", server.address,
        "--models", "scaler,typed",
        "--input-data", f"scaler={scaler_json}",
        "--input-data", f"typed={typed_npz}",
        "--slo", str(write_slo(tmp_path, SLO)),
        "--users", "2",
        "--spawn-rate", "2",
        "--duration", "3s",
        "--warmup", "0s",
    )  # fmt: skip
    assert result.returncode == 0, result.output + result.logs
    _assert_all_succeeded(result.out, {"scaler", "typed"})
    index = json.loads((result.out / "workloads.json").read_text())["models"]
    assert index["scaler"]["description"] == "2 request(s) from scaler.json"
    assert index["typed"]["description"] == "1 request(s) from typed.npz"
    assert index["scaler"]["source"] == index["typed"]["source"] == "data"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--models", "typed", "--shape", "IN_INT32:5"),
            "error: model 'typed' input 'IN_BYTES' has variable dims [-1]: give its shape with "
            "--shape IN_BYTES:N (N: the size to send)",
        ),
        (
            ("--models", "scaler,nope"),
            "error: --models: model 'nope' is not served at {target}; served: scaler, typed",
        ),
        (
            ("--models", "scaler", "--batch-size", "9"),
            "error: --batch-size 9 is over model 'scaler''s max_batch_size 8",
        ),
        (
            ("--models", "scaler", "--input-data", "{bad_npz}"),
            "error: --input-data {bad_npz}: input 'X' is FP32, expected a float32 array, got int64",
        ),
    ],
)
def test_refusals_stop_before_any_load(
    server: ServerThread, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, X=np.zeros((1, 4), np.int64))
    values = {"target": server.address, "bad_npz": str(bad_npz)}
    args = tuple(arg.format(**values) for arg in args)
    result = run_loadtest(tmp_path / "out", "--host", server.address, "--duration", "3s", *args)
    assert result.returncode == 2, result.output
    assert message.format(**values) in result.stderr.splitlines(), result.stderr
    assert "running locust" not in result.stderr
    assert not (tmp_path / "out" / "locust.log").exists()


# Helpers ---------------------------------------------------------------------------------


def _typed_arrays(batch: int) -> dict[str, np.ndarray]:
    """One request for ``typed``: every input's array as sent, batch first."""
    rng = np.random.default_rng(5)
    arrays: dict[str, np.ndarray] = {}
    for datatype in ALL_DATATYPES:
        width = {"INT32": 5, "BYTES": 2}.get(datatype, 3)
        shape = (batch, width)
        if datatype == "BYTES":
            array = np.array([[b"token-%d" % i for i in range(width)]] * batch)
        elif datatype == "BOOL":
            array = rng.integers(0, 2, shape).astype(bool)
        elif datatype == "BF16":
            array = rng.standard_normal(shape).astype(np.float32)  # rounded to BF16 when read
        elif datatype.startswith("FP"):
            array = rng.standard_normal(shape).astype(np.dtype(f"float{datatype[2:]}"))
        else:
            array = rng.integers(0, 50, shape).astype(np.dtype(datatype.lower()))
        arrays[f"IN_{datatype}"] = array
    return arrays


def _assert_all_succeeded(out: Path, models: set[str]) -> None:
    """Locust's CSV: every model got requests and none failed."""
    with (out / "locust_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle) if row["Name"] != "Aggregated"}
    assert set(rows) == models, rows
    for model, row in rows.items():
        assert int(row["Request Count"]) > 0, (model, row)
        assert int(row["Failure Count"]) == 0, (model, row, _failures(out))


def _failures(out: Path) -> str:
    path = out / "locust_failures.csv"
    return path.read_text() if path.is_file() else ""
