"""The contract between a loaded model and the batcher that runs it.

A loader (``batchwire.server.repository``) turns a model file into a
:class:`Model`; the batcher asks it for one :class:`ModelRunner` per instance
and calls runners from worker threads.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from batchwire.core.spec import ModelSpec

#: A model's tensors: torch tensors for numeric datatypes, numpy object arrays for BYTES.
TensorDict = dict[str, "torch.Tensor | np.ndarray"]


@runtime_checkable
class ModelRunner(Protocol):
    """One instance of a model, bound to one device.

    Concurrency: each runner is called by exactly one worker thread at a time
    and never from the event loop. Inputs are on ``device`` already, batch
    dimension first (when the model batches); the runner returns every output
    named in the spec, batch dimension first, on any device.
    """

    device: torch.device

    def __call__(self, inputs: TensorDict) -> TensorDict: ...


@runtime_checkable
class Model(Protocol):
    """A loaded model version: its spec and a factory for per-device runners."""

    spec: ModelSpec

    def create_runner(self, device: torch.device, instance_index: int) -> ModelRunner:
        """Build an instance on ``device`` (called once per instance, from a worker thread)."""
        ...

    def close(self) -> None:
        """Release resources held by the model (optional work; may do nothing)."""
        ...
