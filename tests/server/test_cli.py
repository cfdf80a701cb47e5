"""The ``batchwire`` command line and the installable package."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from testsupport import free_port
from typer.testing import CliRunner

from batchwire.server.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "examples", "infer"):
        assert command in result.output


def test_examples_export_writes_a_triton_repository(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["examples", "export", str(tmp_path), "--model", "mlp"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mlp" / "config.pbtxt").is_file()
    assert (tmp_path / "mlp" / "1" / "model.pt").is_file()
    bad = CliRunner().invoke(app, ["examples", "export", str(tmp_path), "--model", "resnet"])
    assert bad.exit_code != 0
    assert "unknown example(s) resnet" in bad.output


def wait_ready(
    client: triton.InferenceServerClient, proc: subprocess.Popen, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early with {proc.returncode}"
        try:
            if client.is_server_ready():
                return
        except triton.InferenceServerException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready within {timeout} s")


def test_serve_with_no_flags_answers_tritonclient_and_stops_on_sigterm() -> None:
    """The README's serve command: built-in examples, tritonclient answers within a minute.

    Ports come from the environment: a taken metrics port now stops the server, and
    8002 may be in use where the tests run.
    """
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "BATCHWIRE_GRPC_PORT": str(port),
        "BATCHWIRE_METRICS_PORT": str(metrics_port),
        "BATCHWIRE_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchwire", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        wait_ready(client, proc, timeout=60)
        x = triton.InferInput("INPUT__0", [1, 64], "FP32")
        x.set_data_from_numpy(np.ones((1, 64), np.float32))
        assert client.infer("mlp", [x]).as_numpy("OUTPUT__0").shape == (1, 10)
        assert {m.name for m in client.get_model_repository_index().models} >= {
            "mlp",
            "cnn",
            "text",
        }
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert b"nv_inference_request_success" in r.read()
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "listening" in output and "shutting down" in output


@pytest.mark.slow
def test_built_wheel_imports_and_runs_help(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO_ROOT),
        ],
        check=True,
    )
    (wheel,) = wheel_dir.glob("batchwire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "batchwire/server/cli.py",
        "batchwire/protos/grpc_service_pb2.py",
        "batchwire/batching/__init__.py",
        "batchwire/protos/grpc_service.proto",
    ):
        assert expected in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import batchwire.server.servicer, batchwire.batching, batchwire.clients; print(batchwire.__file__)",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith(str(target))
    script = target / "bin" / "batchwire"
    result = subprocess.run(
        [sys.executable, str(script), "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
