"""``batchwire serve`` start-up failures: one line on stderr, a non-zero exit, no traceback.

Failures the operator can fix (a port in use, a missing repository, the server
dependencies not installed) exit with 1; invalid option values with 2 (click's
usage error). A bug still shows its traceback.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchwire.server.app import BatchwireServer, StartupError, host_port, listen_problem
from batchwire.server.settings import ServerSettings


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``batchwire serve *args`` to its end (it must not start serving).

    The caller's BATCHWIRE_* variables are left out, so that only ``env`` sets any.
    """
    clean = {key: value for key, value in os.environ.items() if not key.startswith("BATCHWIRE_")}
    return subprocess.run(
        [sys.executable, "-m", "batchwire", "serve", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line(completed: subprocess.CompletedProcess[str]) -> str:
    """The only line on stderr; fails when there are more, or a traceback."""
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{completed.stderr}"
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A 127.0.0.1 port with a live listener on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


# Tracing starts an exporter process, which logs: the ports are checked before that.
TRACING = ["--trace-mode", "always", "--trace-exporter", "console"]


@pytest.mark.parametrize("extra", [[], TRACING], ids=["plain", "tracing"])
def test_a_taken_grpc_port_is_one_line_naming_the_address(
    taken_port: int, extra: list[str]
) -> None:
    completed = serve(
        "--host", "127.0.0.1", "--port", str(taken_port), "--metrics-port", "0", *extra
    )
    assert completed.returncode == 1
    assert one_line(completed) == (
        f"batchwire: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    )
    assert completed.stdout == ""


@pytest.mark.parametrize("extra", [[], TRACING], ids=["plain", "tracing"])
def test_a_taken_metrics_port_is_one_line_naming_the_address(
    taken_port: int, extra: list[str]
) -> None:
    completed = serve(
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(taken_port), *extra
    )
    assert completed.returncode == 1
    assert one_line(completed) == (
        f"batchwire: cannot listen on 127.0.0.1:{taken_port} for metrics: address already in use"
    )


def test_a_missing_repository_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    completed = serve("--model-repository", str(missing), "--port", "0", "--metrics-port", "0")
    assert completed.returncode == 1
    assert one_line(completed) == f"batchwire: model repository '{missing}' does not exist"


def test_a_repository_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "models.txt"
    file.write_text("not a folder\n")
    completed = serve(
        "--port", "0", "--metrics-port", "0", env={"BATCHWIRE_MODEL_REPOSITORY": str(file)}
    )
    assert completed.returncode == 1
    assert one_line(completed) == f"batchwire: model repository '{file}' is a file, not a directory"


def test_the_grpc_port_again_as_metrics_port_is_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    completed = serve("--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(port))
    assert completed.returncode == 1
    assert one_line(completed) == (
        f"batchwire: cannot listen on 127.0.0.1:{port} for metrics: address already in use"
    )


def test_an_unknown_host_is_one_line() -> None:
    completed = serve("--host", "no-such-host.invalid", "--port", "8001", "--metrics-port", "0")
    assert completed.returncode == 1
    line = one_line(completed)
    assert line.startswith("batchwire: cannot listen on no-such-host.invalid:8001: unknown host")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "70000"], {}, "expected a port number from 0 to 65535, got 70000"),
        (["--port", "http"], {}, "expected a port number from 0 to 65535, got 'http'"),
        ([], {"BATCHWIRE_METRICS_PORT": "-1"}, "BATCHWIRE_METRICS_PORT"),
        (["--max-message-mb", "4096"], {}, "expected a size in MiB from 1 to 2047, got 4096"),
        (["--intra-op-threads", "0"], {}, "expected a thread count of 1 or more, got 0"),
        (["--trace-rate", "1.5"], {}, "expected a fraction from 0 to 1, got 1.5"),
        (["--log-level", "verbose"], {}, "'verbose' is not one of 'debug', 'info', 'warning'"),
        ([], {"BATCHWIRE_LOG_FORMAT": "xml"}, "'xml' is not one of 'text', 'json'"),
        (["--trace-mode", "sometimes"], {}, "'sometimes' is not one of 'off', 'ratio'"),
        (["--log-level"], {}, "Option '--log-level' requires an argument"),
    ],
)
def test_invalid_values_are_one_error_line_and_exit_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    completed = serve(*args, env=env)
    assert completed.returncode == 2, completed.stderr
    errors = [line for line in completed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, completed.stderr
    assert expected in errors[0]
    assert "Traceback" not in completed.stderr


def test_log_level_accepts_any_case_from_the_environment(tmp_path: Path) -> None:
    """The env var kept working for INFO/WARNING written in capitals (set past the flag check)."""
    missing = tmp_path / "nope"
    completed = serve(
        "--model-repository",
        str(missing),
        "--port",
        "0",
        "--metrics-port",
        "0",
        env={"BATCHWIRE_LOG_LEVEL": "WARNING"},
    )
    assert completed.returncode == 1
    assert one_line(completed) == f"batchwire: model repository '{missing}' does not exist"


@pytest.mark.parametrize("module", ["torch", "prometheus_client", "opentelemetry"])
def test_serve_without_the_server_dependencies_says_what_to_install(module: str) -> None:
    """The client-only install: the module is hidden as if it were not installed."""
    program = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "sys.argv = ['batchwire', 'serve', '--port', '0', '--metrics-port', '0']\n"
        "from batchwire.server.cli import main\n"
        "main()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 1
    line = one_line(completed)
    assert line.startswith(
        "batchwire serve needs the server dependencies: pip install 'batchwire[server]' (missing: "
    )
    assert module in line


def test_an_unexpected_error_keeps_its_traceback() -> None:
    """Only StartupError becomes one line: a bug in start() is shown with its traceback."""
    program = (
        "import sys\n"
        "from batchwire.server import app\n"
        "async def broken(self):\n"
        "    raise ZeroDivisionError('a bug in start')\n"
        "app.BatchwireServer.start = broken\n"
        "sys.argv = ['batchwire', 'serve', '--port', '0', '--metrics-port', '0']\n"
        "from batchwire.server.cli import main\n"
        "main()\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode != 0
    assert "Traceback" in completed.stderr
    assert "ZeroDivisionError" in completed.stderr and "a bug in start" in completed.stderr


def test_startup_error_from_the_library(taken_port: int, tmp_path: Path) -> None:
    """BatchwireServer.start raises StartupError itself; the CLI only prints it."""

    async def start(settings: ServerSettings) -> str:
        server = BatchwireServer(settings)
        try:
            await server.start()
        except StartupError as exc:
            return str(exc)
        finally:
            await server.stop(grace=0)
        raise AssertionError("the server started")

    taken = ServerSettings(host="127.0.0.1", port=taken_port, model_repository=tmp_path)
    assert asyncio.run(start(taken)) == (
        f"cannot listen on 127.0.0.1:{taken_port}: address already in use"
    )
    metrics = ServerSettings(
        host="127.0.0.1",
        port=0,
        model_repository=tmp_path,
        metrics_port=taken_port,
        metrics_required=True,
    )
    assert asyncio.run(start(metrics)) == (
        f"cannot listen on 127.0.0.1:{taken_port} for metrics: address already in use"
    )


def test_listen_problem_and_host_port(taken_port: int) -> None:
    assert listen_problem("127.0.0.1", taken_port) == "address already in use"
    assert listen_problem("127.0.0.1", 0) is None
    assert host_port("::", 8001) == "[::]:8001"
    assert host_port("[::1]", 8001) == "[::1]:8001"
    assert host_port("0.0.0.0", 8001) == "0.0.0.0:8001"
