"""Fixtures for the client tests: a local echo server, and the real server if available."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from echo_server import EchoServer


@pytest.fixture(scope="session")
def echo_address() -> Iterator[str]:
    """``host:port`` of an in-process echo server (see ``echo_server.py``)."""
    server = EchoServer()
    address = server.start()
    try:
        yield address
    finally:
        server.stop()


@pytest.fixture(scope="session")
def live_server_address(request: pytest.FixtureRequest) -> str:
    """The real batchwire server from ``tests/conftest.py``'s ``server_address`` fixture.

    Skips only while that fixture does not exist yet; once it does, its own
    failures fail the tests.
    """
    try:
        return request.getfixturevalue("server_address")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py does not define the `server_address` fixture yet")
