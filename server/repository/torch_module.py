"""A :class:`~batchwire.core.model.Model` around any callable PyTorch module.

TorchScript, torch.export and (when allowed) pickled modules differ only in
how a file becomes a module on a device; running one is the same, so the
three loaders share this class and pass it a ``load(device)`` function.

Instances on the same device share one module: the runners call it under
``torch.inference_mode()``, which keeps the weights read-only, so copies
would only cost memory (the concern on GPUs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from batchwire.core.errors import ModelLoadError
from batchwire.core.model import TensorDict
from batchwire.core.spec import ModelSpec
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.torch_io import (
    InputBinding,
    bind_inputs,
    bind_outputs,
    positional_args,
)

log = logging.getLogger(__name__)

#: Turns the model file into a module on a device (raises ModelLoadError).
ModuleLoader = Callable[[torch.device], Callable[..., object]]


def canonical_device(device: torch.device | str) -> torch.device:
    """``cuda`` -> ``cuda:<current>`` so one device has one cache key."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class TorchModuleRunner:
    """One instance: binds the config's inputs to forward()'s arguments and names the results."""

    def __init__(
        self,
        module: Callable[..., object],
        device: torch.device,
        spec: ModelSpec,
        binding: InputBinding,
        where: str,
    ) -> None:
        self.device = device
        self._module = module
        self._spec = spec
        self._binding = binding
        self._where = where

    def __call__(self, inputs: TensorDict) -> TensorDict:
        """Run one batch; inputs and outputs are batch-first, keyed by config name."""
        with torch.inference_mode():
            result = self._module(*positional_args(self._spec, self._binding, inputs))
            return bind_outputs(self._spec, result, self._where)


class TorchModuleModel:
    """A loaded model version whose file holds one PyTorch module."""

    def __init__(
        self,
        spec: ModelSpec,
        path: Path,
        load: ModuleLoader,
        arg_names: Sequence[str] | None,
        *,
        first: tuple[torch.device, Callable[..., object]] | None = None,
    ) -> None:
        """``first``: a module already loaded (to validate the file), reused for its device."""
        self.spec = spec
        self.path = path
        self._load = load
        self._binding = bind_inputs(spec, arg_names, path)
        log.debug(
            "%s: inputs bind to forward() by %s: %s",
            path,
            self._binding.rule,
            list(self._binding.order),
        )
        self._modules: dict[torch.device, Callable[..., object]] = {}
        self._lock = threading.Lock()
        if first is not None:
            self._modules[canonical_device(first[0])] = first[1]

    def _module_for(self, device: torch.device) -> Callable[..., object]:
        # One load per device, even when instances start concurrently.
        with self._lock:
            module = self._modules.get(device)
            if module is None:
                module = self._load(device)
                self._modules[device] = module
            return module

    def create_runner(self, device: torch.device, instance_index: int) -> TorchModuleRunner:
        """An instance on ``device``; raises ModelLoadError when the file cannot go there."""
        device = canonical_device(device)
        try:
            module = self._module_for(device)
        except ModelLoadError:
            raise
        except Exception as exc:  # e.g. CUDA errors while moving weights
            raise load_error(self.path, "", f"cannot load on {device}: {exc}") from exc
        where = f"{self.spec.name} version {self.spec.version} ({self.path.name})"
        return TorchModuleRunner(module, device, self.spec, self._binding, where)

    def close(self) -> None:
        """Drop the modules; the runners still hold theirs until they are dropped too."""
        with self._lock:
            self._modules.clear()
