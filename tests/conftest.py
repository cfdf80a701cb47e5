"""Shared fixtures: real batchwire servers on ephemeral loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from testsupport import require_component, start_server

if TYPE_CHECKING:
    from batchwire.serve_process import ServerProcess
    from batchwire.server.app import ServerThread


@pytest.fixture(scope="session")
def examples_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in example models exported once as a Triton-layout repository."""
    from batchwire.examples.export import export_examples

    root = tmp_path_factory.mktemp("examples-repo")
    export_examples(root)
    return root


@pytest.fixture(scope="session")
def example_server(examples_repository: Path) -> Iterator[ServerThread]:
    """One server on the example models, shared by the whole session (read-only use)."""
    server = start_server(examples_repository)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_address(example_server: ServerThread) -> str:
    """``127.0.0.1:<port>`` of the shared example-model server."""
    return example_server.address


@pytest.fixture(scope="session")
def examples_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m batchwire serve`` on its default repository (the built-in examples), as
    the README runs it, in a process of its own, metrics on; shared by the session.

    For clients that must not share this process: Locust (gevent), other venvs.
    """
    from batchwire.serve_process import ServerNotReadyError, ServerProcess

    log = tmp_path_factory.mktemp("examples-process") / "server.log"
    server = ServerProcess(metrics=True, log_path=log)
    try:
        server.start()
    except ServerNotReadyError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def perf_analyzer() -> str:
    """A Triton perf_analyzer that runs: $BATCHWIRE_PERF_ANALYZER, else one on PATH.

    ``scripts/test.sh`` installs one (``scripts/install-perf-analyzer.sh``); without it
    the tests that drive the server with perf_analyzer skip, saying why (fail in CI).
    """
    import os

    from batchwire.bench.tracing_overhead import find_perf_analyzer

    try:
        return find_perf_analyzer(os.environ.get("BATCHWIRE_PERF_ANALYZER"))
    except ValueError as exc:
        require_component(False, f"no perf_analyzer that runs: {exc}")
        raise  # unreachable: require_component skipped or failed
