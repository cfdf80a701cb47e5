"""``batchwire infer --model-version`` against the real server on the example models.

``--version`` belongs to ``batchwire`` alone (the program's version); the model
version is ``-x/--model-version``, as in Triton's clients.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from batchwire.clients.cli import build_app
from batchwire.server.cli import app as batchwire_app

runner = CliRunner()


@pytest.fixture(params=["batchwire", "standalone"])
def app(request: pytest.FixtureRequest) -> typer.Typer:
    """``batchwire infer`` and ``python -m batchwire.clients.cli infer``."""
    return batchwire_app if request.param == "batchwire" else build_app()


@pytest.mark.parametrize("flag", ["--model-version", "-x"])
def test_model_version_selects_the_version(
    app: typer.Typer, server_address: str, flag: str
) -> None:
    args = ["infer", "-m", "mlp", "--random", "-u", server_address, flag, "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model 'mlp' version '1'" in result.stdout
    assert "OUTPUT__0  FP32  [1, 10]" in result.stdout


def test_an_unknown_model_version_names_it(app: typer.Typer, server_address: str) -> None:
    args = ["infer", "-m", "mlp", "--random", "-u", server_address, "--model-version", "7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr
    assert "'7'" in result.stderr


def test_version_is_not_the_model_version(app: typer.Typer, server_address: str) -> None:
    args = ["infer", "-m", "mlp", "--random", "-u", server_address, "--version", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "No such option: --version" in result.stderr
    assert "--model-version" in result.stderr  # click points at the option meant


def test_batchwire_version_is_the_program_version() -> None:
    result = runner.invoke(batchwire_app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("batchwire ")


def test_infer_subprocess_with_model_version_loads_no_server_code(
    server_address: str,
) -> None:
    """`batchwire infer` as a user runs it: the version is sent, torch is never imported."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchwire", "infer", "-m", "mlp",
         "--random", "-u", server_address, "-x", "1", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert '"model_version": "1"' in completed.stdout
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "batchwire.clients.cli" in imported
    heavy = [name for name in imported if name.split(".")[0] in ("torch", "opentelemetry")]
    heavy += [name for name in imported if name.startswith("batchwire.server.app")]
    assert not heavy, f"batchwire infer imported {heavy}"
