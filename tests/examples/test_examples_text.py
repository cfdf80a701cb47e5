"""The text example: padding with token 0 changes neither the embedding nor the real norms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from batchwire.examples import build_model, reference_outputs


def _pad(rows: list[list[int]], length: int) -> np.ndarray:
    return np.array([row + [0] * (length - len(row)) for row in rows], dtype=np.int64)


def test_padding_does_not_change_the_embedding(
    examples_repository: Path, run_exported: Callable[..., dict[str, np.ndarray]]
) -> None:
    rng = np.random.default_rng(3)
    short = rng.integers(1, 1000, size=5).tolist()
    long = rng.integers(1, 1000, size=37).tolist()

    def run(tokens: np.ndarray) -> dict[str, np.ndarray]:
        return run_exported(examples_repository, "text", {"TOKENS": tokens})

    alone = run(_pad([short], 5))
    batched = run(_pad([short, long], 37))  # short is padded with 32 zeros in this batch

    np.testing.assert_array_equal(batched["EMBEDDING"][0], alone["EMBEDDING"][0])
    np.testing.assert_array_equal(batched["TOKEN_NORMS"][0, :5], alone["TOKEN_NORMS"][0])
    assert batched["TOKEN_NORMS"].shape == (2, 37)
    assert not batched["TOKEN_NORMS"][0, 5:].any()  # pad positions: sliced away by the batcher
    np.testing.assert_array_equal(batched["EMBEDDING"][1], run(_pad([long], 37))["EMBEDDING"][0])

    reference = reference_outputs("text", {"TOKENS": _pad([short, long], 37)})
    np.testing.assert_allclose(batched["EMBEDDING"], reference["EMBEDDING"], rtol=1e-6)


def test_embedding_is_the_mean_of_token_embeddings() -> None:
    tokens = _pad([[4, 9, 4]], 6)
    out = reference_outputs("text", {"TOKENS": tokens})
    table = build_model("text").embedding.weight.detach().numpy()
    np.testing.assert_allclose(out["EMBEDDING"][0], table[[4, 9, 4]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(
        out["TOKEN_NORMS"][0, :3], np.linalg.norm(table[[4, 9, 4]], axis=1), rtol=1e-6
    )
    assert not table[0].any()  # padding_idx row is zero
