"""Shared helpers for the model repository tests: real model folders in tmp_path."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import torch

#: pytest filter for torch's TorchScript deprecation warnings (TorchScript is what we test).
JIT_DEPRECATION = "ignore:`torch.jit:DeprecationWarning"


def write_model(
    root: Path,
    name: str,
    config: str | None,
    files: dict[str, bytes | str] | None = None,
) -> Path:
    """Create ``root/name`` with a config.pbtxt (unless None) and ``files`` (relative paths)."""
    model_dir = root / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(textwrap.dedent(config), encoding="utf-8")
    for relative, content in (files or {}).items():
        path = model_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content), encoding="utf-8")
    return model_dir


def save_script(module: torch.nn.Module, path: Path) -> Path:
    """torch.jit.script ``module`` and save it at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path
