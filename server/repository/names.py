"""Which model names a load may use: a folder directly inside the repository, nothing else.

A model name comes from a caller (RepositoryModelLoad) or from the command line
(``--load-model``), so it is checked before it is joined to the repository root:

* :func:`check_model_name` (no disk access): the name is one path component
  naming a child of the root: not empty, no ``/``, ``\\`` or NUL in it, and not
  ``.`` or ``..`` (with no separator, a name can climb only by being ``..``).
* :func:`check_inside` (touches the disk): the model folder, every symbolic link
  directly in it (a linked version folder or config.pbtxt) and each served
  version's model file resolve, links followed, to a path under the repository
  root's own resolved path. A link to elsewhere in the repository is allowed; one
  leading out is not.

Both raise :class:`~batchwire.core.errors.ModelNameError` (INVALID_ARGUMENT) naming
the model and why.
"""

from __future__ import annotations

from pathlib import Path

from batchwire.core.errors import ModelNameError


def check_model_name(name: str) -> None:
    """Raise ModelNameError unless ``name`` can only name a folder inside the repository."""
    why = _name_problem(name)
    if why:
        raise ModelNameError(f"model name {name!r} must be a folder name in the repository ({why})")


def _name_problem(name: str) -> str:
    if not name:
        return "it is empty"
    if "\0" in name:
        return "it contains a NUL character"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name in (".", ".."):
        return f"'{name}' is not a child folder of the repository"
    return ""


def check_inside(name: str, path: Path, real_root: Path, what: str) -> None:
    """Raise ModelNameError when ``path`` (``what`` of model ``name``) resolves outside ``real_root``.

    A path that does not exist passes (the caller reports it as missing).
    """
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        raise ModelNameError(f"model {name!r}: {what} {path} cannot be resolved: {exc}") from None
    if target != real_root and real_root not in target.parents:
        raise ModelNameError(
            f"model {name!r}: {what} {path} resolves to {target}, outside the model "
            f"repository {real_root}"
        )
