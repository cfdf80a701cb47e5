"""What the repository found for one model version, before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batchwire.core.spec import ModelSpec
from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.platforms import Format


@dataclass(frozen=True)
class ModelVersionSource:
    """One servable version: its folder, filled config and spec (``spec.version`` set)."""

    name: str
    version: str
    #: The version folder, ``<repo>/<model>/<version>``.
    path: Path
    #: The filled config (defaults applied), shared by every version of the model.
    config: mc.ModelConfig = field(repr=False, compare=False)
    spec: ModelSpec = field(repr=False)
    format: Format = Format.TORCHSCRIPT

    @property
    def model_file(self) -> Path:
        """The file to load: ``<version folder>/<default_model_filename>``."""
        return self.path / self.config.default_model_filename


@dataclass(frozen=True)
class ModelEntry:
    """One model folder: either its servable versions or why it cannot be served."""

    name: str
    #: The model folder, ``<repo>/<model>``.
    path: Path
    versions: list[ModelVersionSource] = field(default_factory=list)
    #: The ModelLoadError message when the model cannot be served; None when ok.
    error: str | None = None
    #: The private folder ``path`` is in when the versions come from a load request's
    #: file overrides (:mod:`~batchwire.server.repository.overrides`); whoever serves them
    #: removes it (remove_override_folder) once they are unloaded or replaced. None when
    #: the versions come from the repository itself.
    workdir: Path | None = None

    @property
    def ok(self) -> bool:
        """True when the config is valid and every selected version has its file."""
        return self.error is None
