"""RepositoryModelLoad's overrides: a JSON ``config`` and ``file:<version>/<path>`` files.

Triton's load parameters (protocol extension ``model_repository``), checked in this order
by :func:`parse_load_parameters`, each refusal an :class:`OverrideError` of one line:

* ``config``, a string: a JSON ModelConfig used *instead of* the model's config.pbtxt
  (not merged with it). Parsed by ``google.protobuf.json_format`` with unknown fields
  refused, as Triton's ``JsonToModelConfig``; a refusal reads ``Invalid config override:
  <what protobuf said>``. The parsed config then gets exactly the defaults and checks of
  a config.pbtxt (:func:`override_config`), its errors naming ``config override`` where
  a config.pbtxt's name the file.
* ``file:<version>/<path>``, bytes: one file of a *private model folder* that replaces
  the repository's folder for this load: only the files sent are in it (Triton's
  override directory). ``<version>`` is a version folder name (a canonical positive
  integer) and ``<path>`` a relative path of one or more names; ``..``, ``.``, empty
  names, absolute paths, backslashes and NUL are refused, and a file and a folder may
  not share a path (Triton: "directory has been created as a file"). File overrides need
  the ``config`` parameter (Triton's rule and message).
* anything else is refused naming the parameters accepted.

The private folder (:func:`write_override_folder`) is ``<tmp>/batchwire-<pid>-override-
<random>/<model>``, made with :func:`tempfile.mkdtemp` (mode 0700, owned by the server's
user); files are created with ``O_EXCL | O_NOFOLLOW`` and mode 0600 and their resolved
paths are checked to stay inside it, so nothing is written through a link. Whoever serves
the versions loaded from it removes it (:func:`remove_override_folder`) once they are
unloaded or replaced, and at server stop (the registry does; see
:attr:`~batchwire.server.repository.source.ModelEntry.workdir`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.config import fill_defaults
from batchwire.server.repository.platforms import Format
from batchwire.server.repository.validate import validate_config

__all__ = [
    "CONFIG_KEY",
    "CONFIG_OVERRIDE",
    "FILE_PREFIX",
    "LoadOverrides",
    "OverrideError",
    "override_config",
    "parse_config_json",
    "parse_load_parameters",
    "remove_override_folder",
    "write_override_files",
    "write_override_folder",
]

#: The load parameter holding the JSON ModelConfig.
CONFIG_KEY = "config"
#: Prefix of the load parameters holding a file of the override model folder.
FILE_PREFIX = "file:"
#: What config errors name instead of a config.pbtxt path when the config is an override.
CONFIG_OVERRIDE = "config override"
#: How the accepted parameters are named in a refusal.
ACCEPTED = f"'{CONFIG_KEY}' (string) and '{FILE_PREFIX}<version>/<path>' (bytes)"

_VERSION_NAME = re.compile(r"[1-9][0-9]*")
#: Triton's names of parameter types (TRITONSERVER_ParameterTypeString).
_TYPE_NAMES = {bool: "BOOL", int: "INT", str: "STRING", bytes: "BYTES"}


class OverrideError(ValueError):
    """A load parameter that cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class LoadOverrides:
    """What a RepositoryModelLoad's parameters ask for, checked (see the module docstring)."""

    #: The JSON ModelConfig text, None when the config.pbtxt is used.
    config: str | None = None
    #: Relative path (``<version>/<path>``) -> content of the private model folder.
    files: dict[str, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.config is not None or bool(self.files)


def _type_name(value: object) -> str:
    return "NONE" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def parse_load_parameters(parameters: Mapping[str, object] | None) -> LoadOverrides:
    """Check ``parameters`` (key -> bool, int, str, bytes or None) as Triton's load does.

    Raises OverrideError for an unknown key, a value of the wrong type, a file path that
    is not ``<version>/<path>`` inside the model folder, and file overrides without a
    config. The config's JSON is not parsed here (see :func:`parse_config_json`).
    """
    config: str | None = None
    files: dict[str, bytes] = {}
    for key in sorted(parameters or {}):
        value = parameters[key]  # type: ignore[index]
        if key == CONFIG_KEY:
            if not isinstance(value, str):
                raise OverrideError(
                    f"Config parameter '{CONFIG_KEY}' must have string type for its value "
                    f"(got {_type_name(value)})"
                )
            config = value
        elif key.startswith(FILE_PREFIX):
            if not isinstance(value, bytes):
                raise OverrideError(
                    f"File parameter '{key}' must have bytes type for its value "
                    f"(got {_type_name(value)})"
                )
            files[_file_path(key)] = value
        else:
            raise OverrideError(
                f"Unrecognized load parameter '{key}' with type '{_type_name(value)}' "
                f"(expected {ACCEPTED})"
            )
    if files and config is None:
        raise OverrideError(
            f"Load parameter '{CONFIG_KEY}' must be specified for model file override"
        )
    _check_no_clash(files)
    return LoadOverrides(config, files)


def _file_path(key: str) -> str:
    """The relative path of ``file:<version>/<path>``; OverrideError when it is not one."""
    relative = key[len(FILE_PREFIX) :]
    problem = ""
    if not relative:
        problem = "the path is empty"
    elif "\0" in relative:
        problem = "the path contains a NUL character"
    elif "\\" in relative:
        problem = "the path contains a backslash (use '/')"
    elif relative.startswith("/"):
        problem = "the path is absolute"
    else:
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            problem = "every name in the path must be a file or folder name (no '', '.' or '..')"
        elif len(parts) < 2 or not _VERSION_NAME.fullmatch(parts[0]):
            problem = (
                f"expected {FILE_PREFIX}<version>/<path> with <version> a version folder "
                "(a positive integer such as 1)"
            )
    if problem:
        raise OverrideError(
            f"Invalid file parameter '{key}': {problem}; it must stay within the model directory"
        )
    return relative


def _check_no_clash(files: Mapping[str, bytes]) -> None:
    """Refuse a file whose path is also another file's folder."""
    for relative in files:
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise OverrideError(
                    f"Invalid file parameter '{FILE_PREFIX}{relative}', directory has been "
                    f"created as a file ('{FILE_PREFIX}{folder}')"
                )


def parse_config_json(text: str) -> mc.ModelConfig:
    """The ModelConfig of a JSON override; OverrideError (one line) when it is not one.

    As Triton: unknown fields are refused. Enum values must be spelt as in the proto
    (``TYPE_FP32``): protobuf's Python parser has no case-insensitive option.
    """
    try:
        document = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError, and UnicodeDecodeError's kin
        raise OverrideError(f"Invalid config override: Failed to load JSON: {exc}") from None
    if not isinstance(document, dict):
        raise OverrideError(
            "Invalid config override: expected a JSON object (a ModelConfig), got "
            f"{type(document).__name__}"
        )
    config = mc.ModelConfig()
    try:
        json_format.ParseDict(document, config, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        # ParseError's text may go on with a list of every field: its first line says it.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OverrideError(f"Invalid config override: {first}") from None
    return config


def override_config(text: str, model_dir: Path) -> tuple[mc.ModelConfig, Format]:
    """Parse, fill and validate a JSON override for the model in ``model_dir``.

    Returns the filled config and its format; raises OverrideError for bad JSON and
    ModelLoadError (naming ``config override``) for a config a config.pbtxt could not
    hold either.
    """
    config = parse_config_json(text)
    fmt = fill_defaults(config, model_dir, CONFIG_OVERRIDE)
    validate_config(config, fmt, CONFIG_OVERRIDE)
    return config, fmt


def write_override_folder(name: str, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` into a new private model folder named ``name``; returns that folder.

    ``name`` must already be a checked model name (one folder name). The folder's parent
    is the private temporary folder to remove afterwards (:func:`remove_override_folder`);
    on any failure here it is removed before the error propagates.
    """
    top = Path(tempfile.mkdtemp(prefix=f"batchwire-{os.getpid()}-override-"))
    try:
        model_dir = top / name
        model_dir.mkdir(mode=0o700)
        write_override_files(model_dir, files)
    except BaseException:
        shutil.rmtree(top, ignore_errors=True)
        raise
    return model_dir


def write_override_files(model_dir: Path, files: Mapping[str, bytes]) -> None:
    """Create each checked ``<version>/<path>`` of ``files`` in ``model_dir`` (mode 0600).

    Raises OverrideError for a path whose folder resolves outside ``model_dir`` or that
    exists already (a link, say): nothing is written through a link. The folder
    :func:`write_override_folder` makes is new and private, so this is defence in depth.
    """
    real_dir = model_dir.resolve(strict=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for relative, content in files.items():
        key = f"{FILE_PREFIX}{relative}"
        target = real_dir.joinpath(*relative.split("/"))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = target.parent.resolve(strict=True)
        if folder != real_dir and real_dir not in folder.parents:
            raise OverrideError(
                f"Invalid file parameter '{key}' with normalized path "
                f"'{folder / target.name}' must stay within model directory."
            )
        try:
            fd = os.open(folder / target.name, flags, 0o600)
        except FileExistsError:
            raise OverrideError(
                f"Invalid file parameter '{key}': {folder / target.name} exists already"
            ) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)


def remove_override_folder(model_dir: Path) -> None:
    """Remove a folder made by :func:`write_override_folder` (its private parent with it)."""
    top = model_dir.parent
    if top.name.startswith("batchwire-") and "-override-" in top.name:  # never anything else
        shutil.rmtree(top, ignore_errors=True)
