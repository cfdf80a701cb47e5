"""Building :class:`~batchwire.core.errors.ModelLoadError` messages in one shape.

Every message reads ``<file>: <field>: <problem>``, so an operator sees which
file to open, which field to fix and what was expected versus found.
"""

from __future__ import annotations

from collections.abc import Iterable

from batchwire.core.errors import ModelLoadError


def load_error(path: object, field: str, problem: str) -> ModelLoadError:
    """A ModelLoadError for ``field`` of ``path`` (field may be empty for the whole file)."""
    where = f"{path}: {field}" if field else f"{path}"
    return ModelLoadError(f"{where}: {problem}")


def one_of(values: Iterable[object]) -> str:
    """``a, b, c`` for an 'expected one of ...' clause."""
    return ", ".join(str(v) for v in values)
