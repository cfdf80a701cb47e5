"""Whole ``nn.Module`` objects saved with ``torch.save``: refused unless allowed.

Unpickling runs arbitrary code from the file, so a repository only loads such
files when its operator opts in (``ModelRepository(allow_pickle=True)``, or
the server's ``--allow-pickled-models``). TorchScript and torch.export files
carry no Python code and need no opt-in.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch

from batchwire.core.spec import ModelSpec
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.torch_module import TorchModuleModel

log = logging.getLogger(__name__)

ALLOW_HINT = (
    "pass allow_pickle=True to ModelRepository or --allow-pickled-models to the server "
    "to load it anyway, only if you trust the file"
)
SAVE_HINT = (
    "save the model with torch.jit.script(model).save('model.pt') "
    "or torch.export.save(torch.export.export(model, example_inputs), 'model.pt2')"
)


def _refuse(path: Path) -> Exception:
    """The error for a pickle when pickles are not allowed; peeks only with weights_only."""
    try:
        # weights_only unpickling allows tensors and plain containers only: safe to try,
        # and it tells a state_dict (never loadable) apart from a pickled module.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not weights-only loadable: a pickled object (or garbage)
        obj = None
    if obj is not None:
        return load_error(
            path,
            "",
            f"holds a {type(obj).__name__} of weights (a state_dict?), not a model "
            f"(expected TorchScript); {SAVE_HINT}",
        )
    return load_error(
        path,
        "",
        "is a pickled Python object, not TorchScript; unpickling runs arbitrary code, so "
        f"pickled models are refused (expected a TorchScript file; {SAVE_HINT}; or {ALLOW_HINT})",
    )


def _load_module(path: Path, device: torch.device) -> torch.nn.Module:
    try:
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise load_error(path, "", f"cannot unpickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, torch.nn.Module):
        raise load_error(
            path, "", f"unpickles to a {type(obj).__name__} (expected a torch.nn.Module)"
        )
    return obj.eval()


def forward_arg_names(module: torch.nn.Module) -> list[str] | None:
    """forward()'s positional parameter names, or None when it takes *args."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    names = []
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(parameter.name)
    return names


def load_pickled(spec: ModelSpec, path: Path, *, allow_pickle: bool) -> TorchModuleModel:
    """A model from a pickled module; raises ModelLoadError unless ``allow_pickle``."""
    if not allow_pickle:
        raise _refuse(path)
    log.warning("%s: unpickling a whole module (allowed by allow_pickle)", path)
    module = _load_module(path, torch.device("cpu"))
    return TorchModuleModel(
        spec,
        path,
        lambda device: _load_module(path, device),
        forward_arg_names(module),
        first=(torch.device("cpu"), module),
    )
