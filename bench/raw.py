"""The reference: the same model file called in a plain torch loop, in-process."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def raw_throughput(module: torch.nn.Module, batch: torch.Tensor, seconds: float) -> float:
    """Items per second calling ``module(batch)`` back to back."""
    with torch.inference_mode():
        for _ in range(3):
            module(batch)
        calls = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            module(batch)
            calls += 1
    return calls * batch.shape[0] / elapsed


def raw_latency_ms(module: torch.nn.Module, sample: np.ndarray, repeats: int = 300) -> float:
    """Median milliseconds of one batch-1 call, including numpy -> torch wrapping."""
    timings = []
    with torch.inference_mode():
        for _ in range(10):
            module(torch.from_numpy(sample))
        for _ in range(repeats):
            start = time.perf_counter()
            module(torch.from_numpy(sample)).numpy()
            timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e3)
