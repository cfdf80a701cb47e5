"""Fixtures for the example-model tests: run an exported example through the repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def run_exported() -> Callable[[Path, str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """``run(root, name, inputs)``: the outputs of example ``name`` exported under ``root``.

    Loads the model as the server does (repository loader, the spec's first device)
    and runs one batch of numpy ``inputs`` through a fresh runner.
    """
    from batchwire.batching import resolve_devices
    from batchwire.server.repository import ModelRepository

    def run(root: Path, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        repo = ModelRepository(root)
        source = repo.discover_model(name).versions[0]
        device = resolve_devices(source.spec)[0]
        runner = repo.load(source).create_runner(device, 0)
        out = runner({k: torch.from_numpy(v).to(device) for k, v in inputs.items()})
        return {k: v.cpu().numpy() for k, v in out.items()}

    return run
