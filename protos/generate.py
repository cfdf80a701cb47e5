"""Regenerate the Python stubs from the ``.proto`` files in this folder.

Run ``python -m batchwire.protos.generate`` after editing a ``.proto`` file;
``--check`` exits non-zero when the checked-in stubs differ from what the
installed grpcio-tools generates (the test suite runs that check).

The ``.proto`` files are staged under ``batchwire/protos/`` so the generated
imports are package-absolute (``from batchwire.protos import ...``), and the
modules are pointed at :mod:`batchwire.protos.pool` (see its docstring).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_FILES = (
    "model_config.proto",
    "grpc_service.proto",
    "health.proto",
    "reflection_v1.proto",
    "reflection_v1alpha.proto",
)
_DEFAULT_POOL = "_descriptor_pool.Default()"
_PRIVATE_POOL = "_batchwire_pool.POOL"
_POOL_IMPORT = "from batchwire.protos import pool as _batchwire_pool\n"


def _rewrite_pool(source: str) -> str:
    if _DEFAULT_POOL not in source:
        return source
    marker = "from google.protobuf.internal import builder as _builder\n"
    if marker not in source:
        raise RuntimeError("unexpected protoc output: builder import not found")
    source = source.replace(marker, marker + _POOL_IMPORT, 1)
    return source.replace(_DEFAULT_POOL, _PRIVATE_POOL)


def generate(out_dir: Path) -> list[Path]:
    """Generate the stubs into ``out_dir`` and return the written files."""
    from grpc_tools import protoc  # imported late: a dev-only dependency

    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "src" / "batchwire" / "protos"
        staged.mkdir(parents=True)
        for name in PROTO_FILES:
            shutil.copy(HERE / name, staged / name)
        gen = Path(tmp) / "gen"
        gen.mkdir()
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{Path(tmp) / 'src'}",
            f"-I{include}",
            f"--python_out={gen}",
            f"--pyi_out={gen}",
            f"--grpc_python_out={gen}",
            *(f"batchwire/protos/{name}" for name in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for path in sorted((gen / "batchwire" / "protos").iterdir()):
            text = path.read_text()
            if path.name.endswith("_pb2.py"):
                text = _rewrite_pool(text)
            target = out_dir / path.name
            target.write_text(text)
            written.append(target)
        return written


def stale_files() -> list[str]:
    """Names of checked-in stubs that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            p.name
            for p in fresh
            if not (HERE / p.name).exists() or (HERE / p.name).read_text() != p.read_text()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    ns = parser.parse_args(argv)
    if ns.check:
        stale = stale_files()
        if stale:
            print(f"stale stubs: {', '.join(stale)}; run python -m batchwire.protos.generate")
            return 1
        print("stubs are up to date")
        return 0
    for path in generate(HERE):
        print(f"wrote {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
