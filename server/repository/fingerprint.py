"""What identifies a loaded model version in an audit record: its artifact's and its
config's SHA-256.

- :func:`artifact_sha256`: the SHA-256 of the file the loader read
  (``<version>/<default_model_filename>``), as ``sha256sum`` prints it; when that
  name is a folder (a SavedModel-like layout, a Python model with its modules), a
  tree hash: the SHA-256 of one line ``<sha256>  <relative path>\\n`` per regular
  file, in sorted path order (``find . -type f | sort | xargs sha256sum | sha256sum``
  gives the same from inside the folder).
- :func:`config_sha256`: the SHA-256 of the effective configuration (defaults filled,
  load overrides applied) serialized deterministically as a ModelConfig protobuf, so
  that two loads of the same configuration agree whatever the file's layout.

Both read files: call them off the event loop (the registry does, while loading).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from batchwire.protos import model_config_pb2 as mc
from batchwire.server.repository.source import ModelVersionSource

__all__ = ["artifact_sha256", "config_sha256", "file_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_sha256(source: ModelVersionSource) -> str:
    """The hex SHA-256 of ``source``'s model file, or its tree hash when it is a folder
    (see the module docstring); "" when it is neither."""
    path = source.model_file
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return ""
    lines = [
        f"{file_sha256(item)}  ./{item.relative_to(path).as_posix()}\n"
        for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def config_sha256(config: mc.ModelConfig) -> str:
    """The hex SHA-256 of ``config`` serialized deterministically."""
    return hashlib.sha256(config.SerializeToString(deterministic=True)).hexdigest()
