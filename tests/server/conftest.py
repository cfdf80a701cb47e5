"""Fixtures of the data-plane tests: a two-version model repository, servers with stages."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dataplane_testkit import VERSIONED_CONFIG, VERSIONED_SOURCE
from testsupport import write_python_model

if TYPE_CHECKING:
    from batchwire.server.app import ServerThread
    from batchwire.server.pipeline import StageFactory


@pytest.fixture(scope="module")
def versioned_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model ``versioned``, versions 1 and 2 both served: Y = X + version."""
    root = tmp_path_factory.mktemp("versioned-repo")
    for version in (1, 2):
        write_python_model(root, "versioned", VERSIONED_CONFIG, VERSIONED_SOURCE, version)
    return root


#: ``serve(repository, stages=None, **settings)`` -> a started server (default pipeline
#: without stages; ``settings`` are ServerSettings fields).
ServeFn = Callable[..., "ServerThread"]


@pytest.fixture(scope="module")
def serve() -> Iterator[ServeFn]:
    """Starts servers on free loopback ports, with the given pipeline; stops them after the module."""
    from batchwire.server.app import ServerThread
    from batchwire.server.settings import ServerSettings

    servers: list[ServerThread] = []

    def start(
        repository: Path, stages: Sequence[StageFactory] | None = None, **fields: object
    ) -> ServerThread:
        settings = ServerSettings(
            host="127.0.0.1",
            port=0,
            model_repository=repository,
            **fields,  # type: ignore[arg-type]
        )
        server = ServerThread(settings) if stages is None else ServerThread(settings, stages=stages)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
