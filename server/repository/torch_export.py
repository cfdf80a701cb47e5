"""``model.pt2`` files written by :func:`torch.export.save` (platform ``torch_export``).

An exported program's inputs are positional, in forward()'s argument order
(its recorded ``forward_arg_names``). The program was captured in whatever
train/eval mode it was exported in; exported modules have no ``eval()``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from batchwire.core.model import Model
from batchwire.core.spec import ModelSpec
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.sniff import FileKind, sniff
from batchwire.server.repository.torch_module import TorchModuleModel


def _load_program(path: Path) -> torch.export.ExportedProgram:
    kind = sniff(path)
    if kind is not FileKind.EXPORT:
        raise load_error(
            path,
            "",
            f"is a {kind.value}, not a torch.export archive (expected a file written by "
            "torch.export.save for platform torch_export)",
        )
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise load_error(
            path, "", f"is not a loadable torch.export archive: {type(exc).__name__}: {exc}"
        ) from exc


def _arg_names(program: torch.export.ExportedProgram, module: torch.nn.Module) -> list[str] | None:
    for entry in program.module_call_graph:
        if entry.fqn == "" and entry.signature is not None:
            names = getattr(entry.signature, "forward_arg_names", None)
            if names:
                return list(names)
    try:
        return list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None


def load_exported(spec: ModelSpec, path: Path) -> Model:
    """A model from a torch.export archive."""
    program = _load_program(path)
    module = program.module()

    def on_device(device: torch.device) -> torch.nn.Module:
        if device.type == "cpu":
            return module
        # A fresh module per device: .to() moves parameters and buffers in place.
        return program.module().to(device)

    return TorchModuleModel(
        spec, path, on_device, _arg_names(program, module), first=(torch.device("cpu"), module)
    )
