"""Turn a :class:`ModelVersionSource` into a loaded :class:`~batchwire.core.model.Model`.

One loader per format: TorchScript (:mod:`.torchscript`, which hands pickled
modules to :mod:`.pickled`), torch.export (:mod:`.torch_export`) and python
(:mod:`.python_backend`).
"""

from __future__ import annotations

from batchwire.core.errors import ModelLoadError
from batchwire.core.model import Model
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.params import parse_options
from batchwire.server.repository.platforms import Format
from batchwire.server.repository.python_backend import load_python
from batchwire.server.repository.source import ModelVersionSource
from batchwire.server.repository.torch_export import load_exported
from batchwire.server.repository.torchscript import load_torchscript


def load_model(source: ModelVersionSource, *, allow_pickle: bool = False) -> Model:
    """Load one version; raises ModelLoadError naming the file on any failure."""
    path = source.model_file
    if not path.is_file():
        raise load_error(
            path,
            "",
            f"model file not found (expected {source.config.default_model_filename} in "
            f"version folder {source.path})",
        )
    try:
        if source.format is Format.TORCHSCRIPT:
            return load_torchscript(source.spec, path, allow_pickle=allow_pickle)
        if source.format is Format.TORCH_EXPORT:
            return load_exported(source.spec, path)
        class_name = parse_options(source.config, path).python_class
        return load_python(source.spec, path, class_name)
    except ModelLoadError:
        raise
    except Exception as exc:  # a loader bug or an exotic file: still name the file
        raise load_error(path, "", f"cannot be loaded: {type(exc).__name__}: {exc}") from exc
