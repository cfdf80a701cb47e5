"""Reference data and drift profiles of the example models (batchwire.telemetry.drift_profile).

The reference is drawn the way :func:`batchwire.examples.reference.sample_inputs` draws
test inputs, from its own fixed seed, and the outputs are the eager modules' answers
(:func:`batchwire.examples.reference.reference_outputs`), so every call gives the same
arrays and the same profile.

* ``mlp``: ``INPUT__0`` standard normal float32 ``(N, 64)``, profiled per feature (64
  features); ``OUTPUT__0`` profiled as class scores (top-1 frequencies of its 10 classes).
* ``text``: ``TOKENS`` uniform int64 ids in ``[1, TEXT_VOCAB_SIZE)``, 16 per item, and
  ``TOKEN_NORMS`` pooled (both are variable-length); ``EMBEDDING`` per feature (32).

The other examples have no profile (:func:`example_profile` gives None).
"""

from __future__ import annotations

import numpy as np

from batchwire.examples.models import TEXT_VOCAB_SIZE, get_example
from batchwire.examples.reference import reference_outputs
from batchwire.telemetry.drift_profile import DriftProfile, build_profile

__all__ = [
    "PROFILED_EXAMPLES",
    "REFERENCE_ITEMS",
    "REFERENCE_SEED",
    "example_profile",
    "reference_data",
]

#: Items in each example's reference data.
REFERENCE_ITEMS = 4096
#: The seed the shipped profiles are drawn from (tests draw "live" data from others).
REFERENCE_SEED = 2024
#: Tokens per item of the text example's reference.
_TEXT_LENGTH = 16

#: Examples that ship a profile -> (class-score outputs, pooled tensors).
PROFILED_EXAMPLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mlp": (("OUTPUT__0",), ()),
    "text": ((), ("TOKENS", "TOKEN_NORMS")),
}


def reference_data(
    name: str, items: int = REFERENCE_ITEMS, seed: int = REFERENCE_SEED
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(inputs, outputs)`` of example ``name`` (``mlp`` or ``text``): ``items`` rows each.

    KeyError for an unknown example, ValueError for one without reference data.
    """
    get_example(name)
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray]
    if name == "mlp":
        inputs = {"INPUT__0": rng.standard_normal((items, 64), dtype=np.float32)}
    elif name == "text":
        tokens = rng.integers(1, TEXT_VOCAB_SIZE, size=(items, _TEXT_LENGTH), dtype=np.int64)
        inputs = {"TOKENS": tokens}
    else:
        raise ValueError(
            f"example '{name}' has no drift reference data (expected one of "
            f"{', '.join(PROFILED_EXAMPLES)})"
        )
    return inputs, reference_outputs(name, inputs)


def example_profile(name: str) -> DriftProfile | None:
    """The drift profile example ``name`` ships, or None when it ships none."""
    get_example(name)
    if name not in PROFILED_EXAMPLES:
        return None
    class_scores, pooled = PROFILED_EXAMPLES[name]
    inputs, outputs = reference_data(name)
    return build_profile(inputs, outputs, class_scores=class_scores, pooled=pooled)
