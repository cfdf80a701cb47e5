"""Helpers for the load-test tests (importable as ``loadtest_helpers``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

# Targets any healthy run meets, even on a slow, busy CI machine.
GENEROUS_SLO = """
version = 1
[defaults]
max_failure_ratio = 0.0
[models.mlp]
p50_ms = 2000
p99_ms = 5000
min_rps = 1
[models.text]
p50_ms = 2000
p99_ms = 5000
min_rps = 1
"""


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    out: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def logs(self) -> str:
        """The last 3000 characters of each log the run wrote to ``out`` (failure messages)."""
        return "".join(
            f"\n--- {path.name} ---\n{path.read_text()[-3000:]}"
            for path in sorted(self.out.glob("*.log"))
        )


def write_slo(folder: Path, text: str, name: str = "slo.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run_loadtest(out: Path, *args: str, timeout: float = 120) -> CommandResult:
    """``python -m batchwire.loadtest --out <out> <args>`` in a subprocess."""
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHWIRE_LOADTEST_")}
    completed = subprocess.run(
        [sys.executable, "-m", "batchwire.loadtest", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return CommandResult(
        completed.returncode,
        completed.stdout,
        completed.stderr,
        time.monotonic() - started,
        out,
    )


# A model repository outside the examples -------------------------------------------------

SCALER_CONFIG = """
name: "scaler"
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
"""

#: Inputs of the ``typed`` model with a variable dim (the others are [3]).
VARIABLE_INPUTS = ("INT32", "BYTES")


def write_scaler(root: Path) -> Path:
    """``root/scaler``: a TorchScript model that doubles an FP32 input of dims [4]."""
    import warnings

    import torch

    class Scaler(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    folder = root / "scaler"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(textwrap.dedent(SCALER_CONFIG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Scaler()).save(str(folder / "1" / "model.pt"))
    return folder


def typed_config(name: str = "typed", max_batch_size: int = 4) -> str:
    """A python-platform echo model with one input per v2 datatype.

    Every input has dims [3] except IN_INT32 and IN_BYTES, whose dims are [-1].
    """
    from testsupport import ALL_DATATYPES

    lines = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {max_batch_size}"]
    for kind, prefix in (("input", "IN"), ("output", "OUT")):
        for datatype in ALL_DATATYPES:
            config_type = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
            dims = "[ -1 ]" if datatype in VARIABLE_INPUTS else "[ 3 ]"
            lines.append(
                f'{kind} {{ name: "{prefix}_{datatype}" data_type: {config_type} dims: {dims} }}'
            )
    return "\n".join(lines) + "\n"


def write_typed(root: Path) -> Path:
    """``root/typed``: echoes one input of every datatype (see :func:`typed_config`)."""
    from testsupport import ECHO_MODEL_SOURCE, write_python_model

    return write_python_model(root, "typed", typed_config(), ECHO_MODEL_SOURCE)
