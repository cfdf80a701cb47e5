"""Write the example models as a model repository (TorchScript ``model.pt`` + config)."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from batchwire.examples.models import EXAMPLE_NAMES, build_model, config_text, get_example

# EXAMPLE_NAMES: what export_examples writes by default.
__all__ = ["EXAMPLE_NAMES", "EXAMPLE_VERSION", "export_example", "export_examples"]

log = logging.getLogger(__name__)

#: The version folder every example is written to.
EXAMPLE_VERSION = "1"


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # A server watching the repository must never see a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def export_example(dest: Path, name: str) -> Path:
    """Write ``<dest>/<name>/config.pbtxt`` and ``<dest>/<name>/1/model.pt``; returns the model folder."""
    get_example(name)  # KeyError with the valid names before anything is written
    model_dir = Path(dest) / name
    version_dir = model_dir / EXAMPLE_VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but it is the format Triton serves.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        scripted = torch.jit.script(build_model(name))
    _write_atomically(version_dir / "model.pt", lambda tmp: scripted.save(str(tmp)))
    _write_atomically(
        model_dir / "config.pbtxt", lambda tmp: tmp.write_text(config_text(name), encoding="utf-8")
    )
    log.info("example '%s' written to %s", name, model_dir)
    return model_dir


def export_examples(dest: Path, names: Iterable[str] | None = None) -> list[str]:
    """Export the named examples (all by default) under ``dest``; returns their names."""
    chosen = list(EXAMPLE_NAMES if names is None else names)
    for name in chosen:
        get_example(name)  # validate every name before writing any
    for name in chosen:
        export_example(dest, name)
    return chosen
