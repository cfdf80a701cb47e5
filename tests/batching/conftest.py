"""Fixtures for the batching tests: every test's event loop is left as it was found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    """Fail a test that leaves a task of its event loop unfinished (a request never answered,
    a timer or scheduling pass still pending)."""
    yield
    await asyncio.sleep(0)  # let callbacks scheduled by the test's last step run
    leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    assert not leftover, f"tasks left behind: {leftover}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A stuck batcher fails its test in 30 s rather than at the suite's 300 s limit."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(30))
