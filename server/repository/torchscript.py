"""TorchScript ``model.pt`` files (platform ``pytorch_libtorch``, backend ``pytorch``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from batchwire.core.model import Model
from batchwire.core.spec import ModelSpec
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.pickled import load_pickled
from batchwire.server.repository.sniff import FileKind, sniff
from batchwire.server.repository.torch_module import TorchModuleModel

# TorchScript is deprecated upstream but it is the format Triton repositories
# hold; the warning would repeat for every instance on every load.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")


def _jit_load(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise load_error(
            path, "", f"is not a loadable TorchScript file: {type(exc).__name__}: {exc}"
        ) from exc
    return module.eval()


def script_arg_names(module: torch.jit.ScriptModule, path: Path) -> list[str]:
    """forward()'s argument names from its TorchScript schema (without ``self``)."""
    forward = getattr(module, "forward", None)
    schema = getattr(forward, "schema", None)
    if schema is None:
        raise load_error(path, "", "the TorchScript module has no forward() method")
    return [argument.name for argument in schema.arguments[1:]]


def load_torchscript(spec: ModelSpec, path: Path, *, allow_pickle: bool = False) -> Model:
    """A model from a TorchScript file (a pickled module goes to the pickle loader)."""
    kind = sniff(path)
    if kind is FileKind.PICKLE:
        return load_pickled(spec, path, allow_pickle=allow_pickle)
    if kind is FileKind.EXPORT:
        raise load_error(
            path,
            "",
            "is a torch.export archive, not TorchScript "
            "(expected TorchScript for platform pytorch_libtorch; name it model.pt2 or "
            'set platform: "torch_export")',
        )
    module = _jit_load(path, torch.device("cpu"))
    return TorchModuleModel(
        spec,
        path,
        lambda device: _jit_load(path, device),
        script_arg_names(module, path),
        first=(torch.device("cpu"), module),
    )
