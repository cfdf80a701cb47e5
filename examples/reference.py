"""Expected outputs of the example models, computed in-process by the eager modules.

Tests compare what the server returns with :func:`reference_outputs`;
:func:`sample_inputs` makes deterministic inputs of the right shapes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from batchwire.examples.models import TEXT_VOCAB_SIZE, build_model, get_example


@functools.cache
def _eager(name: str) -> nn.Module:
    return build_model(name)


def reference_outputs(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run example ``name`` eagerly on ``inputs`` (batch first); outputs by config name."""
    example = get_example(name)
    missing = [n for n in example.inputs if n not in inputs]
    if missing:
        raise KeyError(f"example '{name}' needs input(s) {', '.join(missing)}")
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in example.inputs]
    with torch.inference_mode():
        result = _eager(name)(*args)
    if isinstance(result, torch.Tensor):
        named = {example.outputs[0]: result}
    elif isinstance(result, dict):
        named = {n: result[n] for n in example.outputs}
    else:
        named = dict(zip(example.outputs, result, strict=True))
    return {n: value.numpy() for n, value in named.items()}


def sample_inputs(
    name: str, batch_size: int = 1, *, seed: int = 0, length: int = 16
) -> dict[str, np.ndarray]:
    """Deterministic inputs for example ``name`` (``length``: tokens per row for ``text``)."""
    rng = np.random.default_rng(seed)
    if name == "text":
        tokens = rng.integers(1, TEXT_VOCAB_SIZE, size=(batch_size, length), dtype=np.int64)
        return {"TOKENS": tokens}
    shape = (3, 64, 64) if name == "cnn" else (64,)
    get_example(name)
    return {"INPUT__0": rng.standard_normal((batch_size, *shape), dtype=np.float32)}
