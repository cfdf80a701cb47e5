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


@dataclass(frozen=True)
class ServedExamples:
    """A ``python -m batchwire serve`` subprocess on the example models."""

    target: str  # host:port
    metrics_url: str


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
