"""The model formats batchwire loads, and how a config names them.

Triton names a model's format twice: ``platform`` (``pytorch_libtorch``) and
``backend`` (``pytorch``, ``python``). batchwire keeps both spellings so a
Triton repository loads unchanged, adds ``torch_export`` for ``model.pt2``
files written by :func:`torch.export.save`, and resolves every accepted
spelling to one :class:`Format`.
"""

from __future__ import annotations

import enum


class Format(enum.Enum):
    """A loadable model format; the value is the default model file name."""

    TORCHSCRIPT = "model.pt"
    TORCH_EXPORT = "model.pt2"
    PYTHON = "model.py"

    @property
    def default_filename(self) -> str:
        """Triton's ``default_model_filename`` for this format."""
        return self.value


PLATFORM_TORCHSCRIPT = "pytorch_libtorch"
PLATFORM_TORCH_EXPORT = "torch_export"
BACKEND_PYTORCH = "pytorch"
BACKEND_PYTHON = "python"

#: platform -> (format, backend Triton fills in for it).
PLATFORMS: dict[str, tuple[Format, str]] = {
    PLATFORM_TORCHSCRIPT: (Format.TORCHSCRIPT, BACKEND_PYTORCH),
    PLATFORM_TORCH_EXPORT: (Format.TORCH_EXPORT, BACKEND_PYTORCH),
}
#: backends batchwire can run (``pytorch`` covers both TorchScript and torch.export).
BACKENDS: tuple[str, ...] = (BACKEND_PYTORCH, BACKEND_PYTHON)

#: platform written into the filled config for each format (python models have none,
#: as in Triton, where the python backend leaves ``platform`` empty).
FORMAT_PLATFORM: dict[Format, str] = {
    Format.TORCHSCRIPT: PLATFORM_TORCHSCRIPT,
    Format.TORCH_EXPORT: PLATFORM_TORCH_EXPORT,
    Format.PYTHON: "",
}
FORMAT_BACKEND: dict[Format, str] = {
    Format.TORCHSCRIPT: BACKEND_PYTORCH,
    Format.TORCH_EXPORT: BACKEND_PYTORCH,
    Format.PYTHON: BACKEND_PYTHON,
}

#: file suffix -> format, to infer the format from a model file name.
SUFFIXES: dict[str, Format] = {
    ".pt": Format.TORCHSCRIPT,
    ".pth": Format.TORCHSCRIPT,
    ".pt2": Format.TORCH_EXPORT,
    ".py": Format.PYTHON,
}


def format_of_filename(filename: str) -> Format | None:
    """The format a model file name implies from its suffix, or None."""
    for suffix, fmt in SUFFIXES.items():
        if filename.endswith(suffix):
            return fmt
    return None


def spec_platform(fmt: Format) -> str:
    """The ``ModelSpec.platform`` string of a format (never empty)."""
    return FORMAT_PLATFORM[fmt] or FORMAT_BACKEND[fmt]
