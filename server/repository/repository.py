"""The model repository: a folder of model folders, each with a config and versions.

Layout (Triton's)::

    <root>/<model>/config.pbtxt
    <root>/<model>/<version>/model.pt     (or model.pt2, model.py, default_model_filename)

:meth:`ModelRepository.discover` reads every config and picks the versions to
serve, without loading any weights; :meth:`ModelRepository.load` loads one
version. A model that fails never hides the others: its entry carries the
error message instead. No model is loaded from outside the root: a model
folder, every linked entry directly in it and each model file must resolve
inside the root (:mod:`~batchwire.server.repository.names`), or the model fails
with that reason.

:meth:`ModelRepository.discover_override` reads a model as a load request's overrides
describe it (:mod:`~batchwire.server.repository.overrides`): a JSON config instead of
the config.pbtxt, and with file overrides a private model folder instead of the
repository's; there the model files must resolve inside that private folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from batchwire.core.errors import ModelLoadError, ModelNameError
from batchwire.core.model import Model
from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.config import load_config
from batchwire.server.repository.convert import config_to_spec
from batchwire.server.repository.errors import load_error
from batchwire.server.repository.loaders import load_model
from batchwire.server.repository.names import check_inside, check_model_name
from batchwire.server.repository.overrides import (
    CONFIG_OVERRIDE,
    LoadOverrides,
    OverrideError,
    override_config,
    remove_override_folder,
    write_override_folder,
)
from batchwire.server.repository.platforms import Format
from batchwire.server.repository.source import ModelEntry, ModelVersionSource
from batchwire.server.repository.versions import available_versions, select_versions

log = logging.getLogger(__name__)


class ModelRepository:
    """Discovers and loads the models under ``root``.

    ``allow_pickle``: load whole modules saved with ``torch.save`` (unpickling
    runs code from the file; off by default). ``intra_op_threads``: torch
    intra-op threads of each CPU model instance when its config does not set
    ``batchwire.intra_op_threads`` (None: see :mod:`batchwire.batching.placement`).
    """

    def __init__(
        self,
        root: Path,
        *,
        allow_pickle: bool = False,
        intra_op_threads: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.allow_pickle = allow_pickle
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1 or None, got {intra_op_threads}")
        self.intra_op_threads = intra_op_threads

    def model_names(self) -> list[str]:
        """Names of the model folders under the root, sorted (hidden folders skipped)."""
        if not self.root.is_dir():
            raise ModelLoadError(f"{self.root}: model repository folder not found")
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        )

    def discover(self) -> list[ModelEntry]:
        """One entry per model folder, sorted by name; broken models carry their error."""
        entries = [self.discover_model(name) for name in self.model_names()]
        ok = [e for e in entries if e.ok]
        log.info(
            "%s: %d model(s) found, %d ok, %d failed",
            self.root,
            len(entries),
            len(ok),
            len(entries) - len(ok),
        )
        return entries

    def model_folder(self, name: str) -> Path:
        """The folder of model ``name``, once known to lie inside the repository.

        Raises ModelNameError (see :mod:`~batchwire.server.repository.names`) for a
        name that is not a folder name, or a model folder or one of its entries that
        resolves outside the root; ModelLoadError when there is no such folder.
        """
        check_model_name(name)
        model_dir = self.root / name
        real_root = self.root.resolve()
        check_inside(name, model_dir, real_root, "model folder")
        if not model_dir.is_dir():
            raise load_error(model_dir, "", "model folder not found")
        try:
            entries = list(model_dir.iterdir())
        except OSError as exc:
            raise load_error(model_dir, "", f"cannot read the model folder: {exc}") from None
        for entry in entries:
            if entry.is_symlink():
                what = "version folder" if entry.is_dir() else "file"
                check_inside(name, entry, real_root, what)
        return model_dir

    def discover_model(self, name: str) -> ModelEntry:
        """Re-read one model folder (for a reload); an unknown name gives an error entry."""
        model_dir = self.root / name
        try:
            model_dir = self.model_folder(name)
            versions = self._versions(model_dir)
        except (ModelLoadError, ModelNameError) as exc:
            log.error("model '%s' failed: %s", name, exc)
            return ModelEntry(name=name, path=model_dir, error=str(exc))
        log.info(
            "model '%s': %s, version(s) %s",
            name,
            versions[0].spec.platform,
            ", ".join(v.version for v in versions),
        )
        return ModelEntry(name=name, path=model_dir, versions=versions)

    def discover_override(self, name: str, overrides: LoadOverrides) -> ModelEntry:
        """Read model ``name`` as ``overrides`` describe it (a non-empty LoadOverrides).

        With file overrides the model folder is a new private one holding only those
        files (the returned entry's ``workdir``: the caller removes it once done with
        the versions; it is removed here when this raises), so the model need not be in
        the repository; without them it is the repository's folder, read with the JSON
        config instead of its config.pbtxt.

        Raises ModelNameError for a bad name or a repository folder leading outside the
        root, ModelLoadError when the repository has no such folder (config override
        alone), and OverrideError (one line, ``Invalid config override: ...``) when the
        config is not valid JSON or not a valid config for the files it would serve.
        """
        assert overrides.config is not None  # parse_load_parameters enforces it
        workdir: Path | None = None
        if overrides.files:
            check_model_name(name)
            model_dir = workdir = write_override_folder(name, overrides.files)
            real_root = model_dir.parent.resolve()
        else:
            model_dir = self.model_folder(name)
            real_root = self.root.resolve()
        try:
            config, fmt = override_config(overrides.config, model_dir)
            versions = self._versions(model_dir, (config, fmt, CONFIG_OVERRIDE), real_root)
        except ModelLoadError as exc:
            if workdir is not None:
                remove_override_folder(workdir)
            problem = str(exc).removeprefix(f"{CONFIG_OVERRIDE}: ")
            raise OverrideError(f"Invalid config override: {problem}") from None
        except BaseException:
            if workdir is not None:
                remove_override_folder(workdir)
            raise
        where = "a private folder (file overrides)" if workdir else "the repository"
        log.info(
            "model '%s': config override, %s, version(s) %s from %s",
            name,
            versions[0].spec.platform,
            ", ".join(v.version for v in versions),
            where,
        )
        return ModelEntry(name=name, path=model_dir, versions=versions, workdir=workdir)

    def _versions(
        self,
        model_dir: Path,
        override: tuple[mc.ModelConfig, Format, str] | None = None,
        real_root: Path | None = None,
    ) -> list[ModelVersionSource]:
        """The versions to serve; ``override``: (filled config, format, what errors name)
        instead of the config.pbtxt; model files must resolve inside ``real_root`` (the
        repository root's resolved path when None)."""
        if override is None:
            config, fmt = load_config(model_dir)
            config_file: object = model_dir / "config.pbtxt"
        else:
            config, fmt, config_file = override
        if real_root is None:
            real_root = self.root.resolve()
        numbers = select_versions(config.version_policy, available_versions(model_dir), config_file)
        sources = []
        for number in numbers:
            version = str(number)
            source = ModelVersionSource(
                name=config.name,
                version=version,
                path=model_dir / version,
                config=config,
                spec=config_to_spec(config, fmt, version, model_dir, config_file),
                format=fmt,
            )
            check_inside(model_dir.name, source.model_file, real_root, "model file")
            if not source.model_file.is_file():
                raise load_error(
                    source.model_file,
                    "",
                    f"model file not found (expected {config.default_model_filename} in "
                    f"version {version}, per default_model_filename in {config_file})",
                )
            sources.append(source)
        return sources

    def load(self, source: ModelVersionSource) -> Model:
        """Load one version's model file; raises ModelLoadError naming the file."""
        try:
            model = load_model(source, allow_pickle=self.allow_pickle)
        except ModelLoadError as exc:
            log.error("model '%s' version %s failed to load: %s", source.name, source.version, exc)
            raise
        log.info(
            "model '%s' version %s loaded from %s", source.name, source.version, source.model_file
        )
        return model
