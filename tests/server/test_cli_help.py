"""``batchwire ... --help`` reads whole in an 80-column terminal, and stays cheap.

The option and environment variable names are collected from the command objects
typer builds, so a new option is checked without this file changing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import typer

from batchwire.clients.cli import HELP_WIDTH
from batchwire.clients.cli import build_app as build_client_app
from batchwire.server.cli import app


def walk(command: typer.core.TyperGroup | typer.core.TyperCommand, path: tuple[str, ...] = ()):
    """Every command under ``command`` (itself included), with its path of names."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


COMMANDS = dict(walk(typer.main.get_command(app)))


def names(command: typer.core.TyperCommand) -> Iterator[str]:
    """Every option name (``--x``, ``-x``, ``--no-x``) and environment variable of ``command``.

    ``get_params`` rather than ``params``: it adds the ``--help`` option click makes.
    """
    for param in command.get_params(command.context_class(command)):
        if param.param_type_name != "option":
            continue
        yield from param.opts
        yield from param.secondary_opts
        envvars = [param.envvar] if isinstance(param.envvar, str) else param.envvar or []
        yield from envvars


def run_help(argv: list[str], columns: int) -> str:
    """The help ``argv`` prints on a terminal ``columns`` wide, as a user would see it."""
    env = {**os.environ, "COLUMNS": str(columns)}
    for name in ("LINES", "TERMINAL_WIDTH"):  # would override COLUMNS for click or rich
        env.pop(name, None)
    completed = subprocess.run(
        [sys.executable, *argv, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    return completed.stdout


def whole(name: str, text: str) -> bool:
    """Whether ``name`` occurs in ``text`` as a whole word (not inside a longer name)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def check_layout(text: str, width: int) -> None:
    """No line past ``width``, nothing cut short, no word split at a hyphen."""
    for line in text.splitlines():
        assert len(line) <= width, f"{len(line)} columns, expected <= {width}: {line!r}"
        assert "…" not in line, f"truncated: {line!r}"
        if not line.startswith("Usage:"):  # click writes COMMAND [ARGS]... there
            # click's command list ends a summary it cut short with "..."
            assert not line.endswith("..."), f"truncated: {line!r}"
        assert not re.search(r"\w-$", line), f"a name wrapped after its hyphen: {line!r}"


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda path: " ".join(path) or "batchwire")
def test_help_at_80_columns_names_every_option_and_env_var_whole(path: tuple[str, ...]) -> None:
    text = run_help(["-m", "batchwire", *path], columns=80)
    check_layout(text, 80)
    expected = list(names(COMMANDS[path]))
    assert "--help" in expected
    missing = [name for name in expected if not whole(name, text)]
    assert not missing, f"missing or cut in `batchwire {' '.join(path)} --help`: {missing}\n{text}"
    for name in getattr(COMMANDS[path], "commands", {}):
        assert whole(name, text), f"command {name} not listed\n{text}"


@pytest.mark.parametrize("path", [(), ("serve",)], ids=["batchwire", "serve"])
def test_help_at_120_columns_uses_the_room_up_to_the_help_width(path: tuple[str, ...]) -> None:
    wide = run_help(["-m", "batchwire", *path], columns=120)
    check_layout(wide, HELP_WIDTH)
    narrow = run_help(["-m", "batchwire", *path], columns=80)
    assert len(wide.splitlines()) < len(narrow.splitlines())
    for name in names(COMMANDS[path]):
        assert whole(name, wide)


def test_standalone_client_help_at_80_columns() -> None:
    text = run_help(["-m", "batchwire.clients.cli", "infer"], columns=80)
    check_layout(text, 80)
    infer = typer.main.get_command(build_client_app()).commands["infer"]
    assert all(whole(name, text) for name in names(infer))


def test_serve_help_documents_log_levels_and_exit_status() -> None:
    text = run_help(["-m", "batchwire", "serve"], columns=80)
    assert "--log-level <debug|info|warning|error>" in text
    assert "Least severe messages logged" in text
    assert "BATCHWIRE_LOG_LEVEL" in text
    flat = " ".join(text.split())
    assert "1 when the server cannot start" in flat
    assert "2 for an invalid option value" in flat


def imported_modules(argv: list[str]) -> list[str]:
    """Names of the modules ``python -X importtime -m batchwire *argv`` imports."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchwire", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return [
        line.rsplit("|", 1)[1].strip()
        for line in completed.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]


SERVER_ONLY = ("torch", "opentelemetry", "prometheus_client", "batchwire.server.app")
# telemetry/trace_config.py (the trace settings' one declaration) is light and feeds the
# serve command's help; the tracing, metrics and export modules are not.
SERVER_ONLY += (
    "batchwire.telemetry.tracing",
    "batchwire.telemetry.metrics",
    "batchwire.telemetry.span_export",
    "batchwire.batching",
)


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["infer", "--help"], ["serve", "--help"]]
)
def test_help_imports_neither_torch_nor_the_server(argv: list[str]) -> None:
    modules = imported_modules(argv)
    assert "batchwire.server.cli" in modules  # the command line itself was measured
    loaded = [m for m in modules if m.split(".")[0] in SERVER_ONLY or m.startswith(SERVER_ONLY)]
    assert not loaded, f"`batchwire {' '.join(argv)}` imported {loaded}"
