"""Tell what a ``.pt`` / ``.pt2`` file holds from its bytes, without running it.

``torch.jit.save``, ``torch.save`` and ``torch.export.save`` all write zip
archives, told apart by their members: TorchScript has ``code/`` and
``constants.pkl``, torch.export has ``archive_format``, and ``torch.save``
(a pickle) has only ``data.pkl``. Sniffing first means a pickle is never
unpickled just to find out that it is one.
"""

from __future__ import annotations

import enum
import zipfile
from pathlib import Path

# Every pickle protocol >= 2 starts with the PROTO opcode; torch.save's legacy
# (non-zip) format starts with a pickled magic number.
_PICKLE_PROTO = b"\x80"


class FileKind(enum.Enum):
    TORCHSCRIPT = "TorchScript archive (torch.jit.save)"
    EXPORT = "torch.export archive (torch.export.save)"
    PICKLE = "pickle (torch.save of a Python object)"
    UNKNOWN = "unrecognized file"


def sniff(path: Path) -> FileKind:
    """The kind of serialized PyTorch file at ``path`` (OSError if unreadable)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return FileKind.TORCHSCRIPT
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return FileKind.EXPORT
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return FileKind.PICKLE
        return FileKind.UNKNOWN
    with path.open("rb") as handle:
        head = handle.read(1)
    return FileKind.PICKLE if head == _PICKLE_PROTO else FileKind.UNKNOWN
