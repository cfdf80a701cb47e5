"""The layering contracts of pyproject.toml's [tool.importlinter] hold, and they bite.

import-linter reads a package from one folder, while batchwire's subpackages are
top-level folders of the repository (pyproject's package-dir). So it runs on a tree of
links that lays them out as installed, from that tree's folder (import-linter puts
the working directory first on sys.path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from testsupport import require_component

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def installed_layout(tree: Path) -> Path:
    """Links under ``tree/batchwire`` mapping each subpackage to its folder, as installed."""
    mapping = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    package = tree / "batchwire"
    package.mkdir(parents=True)
    for module in (ROOT / mapping["batchwire"]).glob("*.py"):
        (package / module.name).symlink_to(module)
    for name, folder in mapping.items():
        parts = name.split(".")
        if len(parts) == 2:  # batchwire.<sub>; deeper ones live inside their parent folder
            (package / parts[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return tree


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    require_component(LINT_IMPORTS.exists(), "import-linter is not installed (the test extra)")
    return subprocess.run(
        [str(LINT_IMPORTS), str(PYPROJECT), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_layout(tmp_path_factory.mktemp("lint-tree"))


def test_the_import_contracts_are_kept(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " kept, 0 broken." in result.stdout


def test_a_servicer_that_imports_the_batcher_breaks_its_contract(tmp_path: Path) -> None:
    tree = installed_layout(tmp_path)
    # The servicer as it was: it looked models up in the registry, which holds batchers.
    server = tree / "batchwire" / "server"
    server.unlink()
    server.mkdir()
    for module in (ROOT / "server").iterdir():
        (server / module.name).symlink_to(module, target_is_directory=module.is_dir())
    servicer = server / "servicer.py"
    servicer.unlink()
    servicer.write_text("from batchwire.server.registry import ModelRegistry\n")
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the gRPC servicer reaches models through the data plane only BROKEN" in result.stdout
    assert "batchwire.server.registry -> batchwire.batching" in result.stdout
