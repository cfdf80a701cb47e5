"""The stubs' protobuf gencode is one that every runtime batchwire allows accepts.

protobuf refuses gencode newer than its runtime (VersionError at import). So the
gencode in the checked-in stubs must be no newer than the lowest protobuf that
pyproject.toml allows, and the import must work on whichever runtime is installed
(scripts/test.sh runs this on protobuf 6 and on protobuf 7).
"""

from __future__ import annotations

import importlib
import re

import google.protobuf
import pytest
import tomllib
from testsupport import REPO_ROOT

PROTOS = REPO_ROOT / "protos"
PYPROJECT = REPO_ROOT / "pyproject.toml"
STUBS = sorted(p.stem for p in PROTOS.glob("*_pb2.py"))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _protobuf_requirement() -> str:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (requirement,) = [d for d in dependencies if re.match(r"protobuf\b", d)]
    return requirement


def test_every_proto_file_has_a_stub() -> None:
    assert {p.stem for p in PROTOS.glob("*.proto")} == {s.removesuffix("_pb2") for s in STUBS}


@pytest.mark.parametrize("stub", STUBS)
def test_gencode_is_the_lowest_allowed_runtime(stub: str) -> None:
    source = (PROTOS / f"{stub}.py").read_text()
    gencode = re.search(r"^# Protobuf Python Version: ([\d.]+)$", source, flags=re.M)
    assert gencode, f"{stub}.py names no gencode version"
    lowest = re.search(r">=\s*([\d.]+)", _protobuf_requirement())
    assert lowest, f"pyproject's {_protobuf_requirement()!r} has no lower bound"
    assert _version(gencode.group(1)) == _version(lowest.group(1)), (
        f"{stub}.py carries gencode {gencode.group(1)} but pyproject allows protobuf from "
        f"{lowest.group(1)}: regenerate with the grpcio-tools of the test extra, or move the bound"
    )


def test_upper_bound_is_one_major_past_the_gencode() -> None:
    """protobuf promises a runtime accepts gencode one major version older, no further."""
    upper = re.search(r"<\s*(\d+)", _protobuf_requirement())
    lowest = re.search(r">=\s*(\d+)", _protobuf_requirement())
    assert upper and lowest
    assert int(upper.group(1)) == int(lowest.group(1)) + 2


@pytest.mark.parametrize("stub", STUBS)
def test_stub_imports_on_the_installed_runtime(stub: str) -> None:
    module = importlib.import_module(f"batchwire.protos.{stub}")
    assert module.DESCRIPTOR.name == f"batchwire/protos/{stub.removesuffix('_pb2')}.proto"
    assert int(google.protobuf.__version__.split(".")[0]) in (6, 7)
