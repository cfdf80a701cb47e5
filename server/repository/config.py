"""Read ``<repo>/<model>/config.pbtxt``: parse, fill Triton's defaults, validate.

:func:`load_config` is the entry point; it returns the *filled* config (what
the ModelConfig RPC reports) and the model's :class:`Format`. The filled
defaults follow Triton:

* ``name`` defaults to the model folder's name and must equal it when set;
* ``platform`` / ``backend``: either spelling is accepted and the other one is
  filled in; when neither is set the format is inferred from
  ``default_model_filename`` or from the model files in the version folders
  (``model.pt`` TorchScript, ``model.pt2`` torch.export, ``model.py`` python);
* ``default_model_filename`` defaults to the format's file name;
* ``version_policy`` defaults to ``latest { num_versions: 1 }``;
* an empty ``instance_group`` becomes one group of one ``KIND_AUTO`` instance,
  groups get a name (``<model>_<index>``) and ``count`` 1 when unset.

Conversion to a :class:`~batchwire.core.spec.ModelSpec` is in
:mod:`batchwire.server.repository.convert`.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.errors import load_error, one_of
from batchwire.server.repository.platforms import (
    BACKEND_PYTHON,
    BACKEND_PYTORCH,
    BACKENDS,
    FORMAT_BACKEND,
    FORMAT_PLATFORM,
    PLATFORMS,
    SUFFIXES,
    Format,
    format_of_filename,
)
from batchwire.server.repository.validate import validate_config
from batchwire.server.repository.versions import available_versions

CONFIG_FILENAME = "config.pbtxt"


def config_path(model_dir: Path) -> Path:
    """Where a model folder's config lives."""
    return model_dir / CONFIG_FILENAME


def parse_config_text(text: str, path: object) -> mc.ModelConfig:
    """Parse config.pbtxt text; a syntax error names ``path`` and the line and column."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        problem = str(exc)
        # ParseError's text starts with "line:column : " when it knows the position.
        prefix = f"{line}:{column} : "
        if problem.startswith(prefix):
            problem = problem[len(prefix) :]
        where = f" at line {line}, column {column}" if line is not None else ""
        raise load_error(path, "", f"malformed text format{where}: {problem}") from None
    except ValueError as exc:
        # The parser lets some values through to the message, which refuses them
        # ("Value out of range" for an enum given as a huge number; found by fuzzing).
        raise load_error(path, "", f"malformed text format: {exc}") from None
    return config


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Read and parse (without filling defaults) the config of ``model_dir``."""
    path = config_path(model_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise load_error(
            path, "", "file not found (every model folder needs a config.pbtxt)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise load_error(path, "", f"cannot be read: {exc}") from None
    return parse_config_text(text, path)


def _formats_present(model_dir: Path, filenames: list[str]) -> set[Format]:
    """Formats whose model file (one of ``filenames``) exists in some version folder."""
    present: set[Format] = set()
    for version_dir in available_versions(model_dir).values():
        for filename in filenames:
            fmt = format_of_filename(filename)
            if fmt is not None and (version_dir / filename).exists():
                present.add(fmt)
    return present


def _infer_format(
    config: mc.ModelConfig, model_dir: Path, path: object, allowed: tuple[Format, ...]
) -> Format:
    """The format implied by default_model_filename or the files present."""
    if config.default_model_filename:
        fmt = format_of_filename(config.default_model_filename)
        if fmt is None or fmt not in allowed:
            suffixes = [suffix for suffix, f in SUFFIXES.items() if f in allowed]
            raise load_error(
                path,
                "default_model_filename",
                f"cannot tell the model format from '{config.default_model_filename}' "
                f"(expected a name ending in {one_of(suffixes)}, or set platform/backend)",
            )
        return fmt
    present = _formats_present(model_dir, [fmt.default_filename for fmt in allowed])
    if len(present) == 1:
        return present.pop()
    if len(present) > 1:
        names = sorted(fmt.default_filename for fmt in present)
        raise load_error(
            path,
            "platform",
            f"not set and the version folders hold several model files ({one_of(names)}); "
            "set platform or backend to choose one",
        )
    if allowed == (Format.TORCHSCRIPT, Format.TORCH_EXPORT):
        return Format.TORCHSCRIPT  # Triton's pytorch backend default; the file check reports
    names = [fmt.default_filename for fmt in allowed]
    raise load_error(
        path,
        "platform",
        f"not set and no model file found to infer it from (expected one of {one_of(names)} "
        "in a version folder, or set platform/backend)",
    )


def _fill_format(config: mc.ModelConfig, model_dir: Path, path: object) -> Format:
    """Resolve platform/backend to a Format and fill in both fields."""
    if config.platform:
        if config.platform not in PLATFORMS:
            raise load_error(
                path,
                "platform",
                f"'{config.platform}' is not supported (expected one of {one_of(PLATFORMS)}, "
                f"or backend '{BACKEND_PYTHON}')",
            )
        fmt, backend = PLATFORMS[config.platform]
        if config.backend and config.backend != backend:
            raise load_error(
                path,
                "backend",
                f"'{config.backend}' does not match platform '{config.platform}' "
                f"(expected '{backend}' or unset)",
            )
    elif config.backend:
        if config.backend not in BACKENDS:
            raise load_error(
                path,
                "backend",
                f"'{config.backend}' is not supported (expected one of {one_of(BACKENDS)})",
            )
        if config.backend == BACKEND_PYTHON:
            fmt = Format.PYTHON
        else:
            assert config.backend == BACKEND_PYTORCH
            fmt = _infer_format(config, model_dir, path, (Format.TORCHSCRIPT, Format.TORCH_EXPORT))
    else:
        fmt = _infer_format(config, model_dir, path, tuple(Format))
    config.platform = FORMAT_PLATFORM[fmt]
    config.backend = FORMAT_BACKEND[fmt]
    return fmt


def fill_defaults(config: mc.ModelConfig, model_dir: Path, path: object) -> Format:
    """Fill Triton's defaults into ``config`` in place; returns the model format."""
    folder = model_dir.name
    if not config.name:
        config.name = folder
    elif config.name != folder:
        raise load_error(
            path,
            "name",
            f"'{config.name}' does not match the model folder name (expected '{folder}' or unset)",
        )
    fmt = _fill_format(config, model_dir, path)
    if not config.default_model_filename:
        config.default_model_filename = fmt.default_filename
    if config.version_policy.WhichOneof("policy_choice") is None:
        config.version_policy.latest.num_versions = 1
    if not config.instance_group:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_AUTO)
    for index, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{index}"
        if group.count == 0:
            group.count = 1
    for warmup in config.model_warmup:
        if warmup.count == 0:
            warmup.count = 1  # Triton: 0 means "run this sample once"
    return fmt


def load_config(model_dir: Path) -> tuple[mc.ModelConfig, Format]:
    """Read, fill and validate ``model_dir``'s config; raises ModelLoadError."""
    path = config_path(model_dir)
    config = read_config(model_dir)
    fmt = fill_defaults(config, model_dir, path)
    validate_config(config, fmt, path)
    return config, fmt
