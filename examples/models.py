"""The built-in example models: eager modules with seeded weights, and their configs.

Weights come from a private, seeded :class:`torch.Generator` (never torch's
global RNG, never a download), so every build of a model is identical and
exporting twice gives models that produce the same output bytes.

* ``mlp``: ``INPUT__0`` FP32 [64] -> Linear(64, 256)-ReLU-Linear(256, 10) -> ``OUTPUT__0`` FP32 [10].
* ``cnn``: ``INPUT__0`` FP32 [3, 64, 64] -> three 3x3 conv layers -> ``OUTPUT__0`` FP32 [10].
* ``text``: ``TOKENS`` INT64 [-1] (ragged, pad id 0, vocabulary of 1000) ->
  ``EMBEDDING`` FP32 [32], the mean embedding of the non-pad tokens, and
  ``TOKEN_NORMS`` FP32 [-1], each token embedding's L2 norm (0 at pad positions).
* ``null``: same tensors as ``mlp``, returns zeros without computing (a benchmark baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

TEXT_VOCAB_SIZE = 1000
TEXT_DIM = 32
TEXT_PAD_ID = 0


def _seeded_init(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every weight from a seeded generator (independent of torch's default init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                bound = 1.0 / math.sqrt(layer.weight[0].numel())  # 1/sqrt(fan_in)
                for param in (layer.weight, layer.bias):
                    if param is not None:
                        param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)
            elif isinstance(layer, nn.Embedding):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
                if layer.padding_idx is not None:
                    layer.weight[layer.padding_idx].zero_()
    return module.eval()


class MLP(nn.Module):
    """Linear(64, 256)-ReLU-Linear(256, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.layers(x)
        return y


class CNN(nn.Module):
    """Three 3x3 conv blocks and a linear head, for [3, 64, 64] images."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.head(torch.flatten(self.features(x), 1))
        return y


class TextEncoder(nn.Module):
    """Mean token embedding and per-token norms; pad tokens (id 0) change neither."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(TEXT_VOCAB_SIZE, TEXT_DIM, padding_idx=TEXT_PAD_ID)
        self.pad_id = TEXT_PAD_ID  # an attribute: TorchScript cannot read module globals

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        vectors = self.embedding(tokens)  # [batch, length, dim]; pad rows are zero
        mask = (tokens != self.pad_id).unsqueeze(-1).to(torch.float64)
        # Summed in float64: padding changes the reduction's length and so its order,
        # and float32 rounding would then differ in the last bit between padded and
        # unpadded requests.
        total = (vectors.to(torch.float64) * mask).sum(dim=1)
        count = mask.sum(dim=1).clamp(min=1.0)
        return {
            "EMBEDDING": (total / count).to(torch.float32),
            "TOKEN_NORMS": torch.linalg.vector_norm(vectors, dim=-1),
        }


class NullModel(nn.Module):
    """Zeros shaped like the mlp's output, without reading the input's values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((x.shape[0], 10), dtype=torch.float32, device=x.device)


_MLP_TENSORS = """\
max_batch_size: 64
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""

_CONFIGS = {
    "mlp": 'name: "mlp"\nplatform: "pytorch_libtorch"\n' + _MLP_TENSORS,
    "null": 'name: "null"\nplatform: "pytorch_libtorch"\n' + _MLP_TENSORS,
    "cnn": """\
name: "cnn"
platform: "pytorch_libtorch"
max_batch_size: 32
input [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 3, 64, 64 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 5000 }
# Two instances, each on its share of the cores (one intra-op thread on 2 cores): one
# instance on two threads has an OpenMP team that stalls whenever gRPC work takes a core.
instance_group [ { kind: KIND_AUTO, count: 2 } ]
""",
    "text": """\
name: "text"
platform: "pytorch_libtorch"
max_batch_size: 32
input [ { name: "TOKENS", data_type: TYPE_INT64, dims: [ -1 ], allow_ragged_batch: true } ]
output [
  { name: "EMBEDDING", data_type: TYPE_FP32, dims: [ 32 ] },
  { name: "TOKEN_NORMS", data_type: TYPE_FP32, dims: [ -1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 }
parameters { key: "batchwire.ragged_pad_value", value: { string_value: "0" } }
""",
}


@dataclass(frozen=True)
class Example:
    """One example model: how to build it, its config, and its tensor names."""

    name: str
    build: Callable[[], nn.Module]
    config: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


EXAMPLES: dict[str, Example] = {
    "mlp": Example(
        "mlp", lambda: _seeded_init(MLP(), 1), _CONFIGS["mlp"], ("INPUT__0",), ("OUTPUT__0",)
    ),
    "cnn": Example(
        "cnn", lambda: _seeded_init(CNN(), 2), _CONFIGS["cnn"], ("INPUT__0",), ("OUTPUT__0",)
    ),
    "text": Example(
        "text",
        lambda: _seeded_init(TextEncoder(), 3),
        _CONFIGS["text"],
        ("TOKENS",),
        ("EMBEDDING", "TOKEN_NORMS"),
    ),
    "null": Example(
        "null", lambda: NullModel().eval(), _CONFIGS["null"], ("INPUT__0",), ("OUTPUT__0",)
    ),
}
#: Names of the built-in examples, in the order they are documented.
EXAMPLE_NAMES: tuple[str, ...] = tuple(EXAMPLES)


def get_example(name: str) -> Example:
    """The example called ``name``; KeyError listing the names otherwise."""
    try:
        return EXAMPLES[name]
    except KeyError:
        raise KeyError(
            f"no example model '{name}' (expected one of {', '.join(EXAMPLE_NAMES)})"
        ) from None


def build_model(name: str) -> nn.Module:
    """A fresh eager module of example ``name``, with its seeded weights, in eval mode."""
    return get_example(name).build()


def config_text(name: str) -> str:
    """The config.pbtxt text of example ``name``."""
    return get_example(name).config
