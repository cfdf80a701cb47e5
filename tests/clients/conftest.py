"""Fixtures for the client tests: a local echo server and an async client of it.

The real server on the example models is ``tests/conftest.py``'s ``server_address``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from echo_server import EchoServer

from batchwire.clients import AsyncInferenceClient


@pytest.fixture(scope="session")
def echo_address() -> Iterator[str]:
    """``host:port`` of an in-process echo server (see ``echo_server.py``)."""
    server = EchoServer()
    address = server.start()
    try:
        yield address
    finally:
        server.stop()


@pytest.fixture
async def aio_client(echo_address: str) -> AsyncIterator[AsyncInferenceClient]:
    """An AsyncInferenceClient of the echo server (10 s deadline), closed after the test."""
    async with AsyncInferenceClient(echo_address, timeout=10) as client:
        yield client
