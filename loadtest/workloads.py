"""Pre-encoded inference requests for the built-in example models.

Each workload builds a pool of ready-to-send ``ModelInferRequest`` messages
once (random batch sizes, random text lengths) so that the load generator only
picks one and sends it: no numpy, no protobuf building on the hot path.

Only numpy and the generated protobufs are imported here (no torch): this
module runs inside every Locust process.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from batchwire.protos import grpc_service_pb2 as pb

#: Requests pre-encoded per model; the user cycles through them at random.
POOL_SIZE = 64


@dataclass(frozen=True)
class Workload:
    """How to build realistic requests for one model."""

    model: str
    description: str
    #: (rng) -> {input name: array}, one request's inputs.
    make_inputs: Callable[[np.random.Generator], dict[str, np.ndarray]]

    def build_pool(self, seed: int = 0, size: int = POOL_SIZE) -> list[pb.ModelInferRequest]:
        """``size`` requests with random inputs; each gets a unique id when sent."""
        rng = np.random.default_rng(seed)
        return [encode_request(self.model, self.make_inputs(rng)) for _ in range(size)]


_V2_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def encode_request(model: str, inputs: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``inputs`` as little-endian raw contents."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = _V2_DATATYPES[array.dtype]
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(
            np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        )
    return request


def _batch(rng: np.random.Generator, low: int = 1, high: int = 4) -> int:
    return int(rng.integers(low, high + 1))


def _dense(features: tuple[int, ...]) -> Callable[[np.random.Generator], dict[str, np.ndarray]]:
    def make(rng: np.random.Generator) -> dict[str, np.ndarray]:
        shape = (_batch(rng), *features)
        return {"INPUT__0": rng.standard_normal(shape, dtype=np.float32)}

    return make


def _text(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # One length per request (a padded batch); lengths vary between requests.
    length = int(rng.integers(4, 65))
    return {"TOKENS": rng.integers(1, 1000, size=(_batch(rng), length), dtype=np.int64)}


WORKLOADS: dict[str, Workload] = {
    "mlp": Workload("mlp", "FP32 INPUT__0 [1..4, 64]", _dense((64,))),
    "cnn": Workload("cnn", "FP32 INPUT__0 [1..4, 3, 64, 64]", _dense((3, 64, 64))),
    "text": Workload("text", "INT64 TOKENS [1..4, 4..64], ids 1..999", _text),
    "null": Workload("null", "FP32 INPUT__0 [1..4, 64], no compute", _dense((64,))),
}

DEFAULT_MODELS = ("mlp", "text")


def parse_models(value: str | Iterable[str] | None) -> list[str]:
    """``"mlp, text"`` -> ``["mlp", "text"]``; ValueError naming unknown models.

    Empty or None gives :data:`DEFAULT_MODELS`. A model may carry a weight:
    ``"mlp:3,text:1"`` (see :func:`parse_weighted_models`).
    """
    return list(parse_weighted_models(value))


def parse_weighted_models(value: str | Iterable[str] | None) -> dict[str, int]:
    """``"mlp:3,text"`` -> ``{"mlp": 3, "text": 1}`` (task weights, in order)."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    items = [item.strip() for item in items if item and item.strip()]
    if not items:
        items = list(DEFAULT_MODELS)
    weights: dict[str, int] = {}
    for item in items:
        name, _, weight_text = item.partition(":")
        name = name.strip()
        if name not in WORKLOADS:
            raise ValueError(
                f"unknown model '{name}'; expected some of {', '.join(sorted(WORKLOADS))}"
            )
        weight = 1
        if weight_text:
            try:
                weight = int(weight_text)
            except ValueError:
                weight = 0
            if weight < 1:
                raise ValueError(
                    f"weight of model '{name}' must be a positive integer, got {weight_text!r}"
                )
        if name in weights:
            raise ValueError(f"model '{name}' is listed twice")
        weights[name] = weight
    return weights


_ids = itertools.count(1)


def next_request_id(prefix: str) -> str:
    """A process-unique request id (``<prefix>-<n>``)."""
    return f"{prefix}-{next(_ids)}"


def pick(pool: list[pb.ModelInferRequest], request_id: str) -> pb.ModelInferRequest:
    """A random pooled request with ``id`` set (a shallow copy; the pool is untouched)."""
    template = random.choice(pool)
    request = pb.ModelInferRequest()
    request.CopyFrom(template)
    request.id = request_id
    return request
