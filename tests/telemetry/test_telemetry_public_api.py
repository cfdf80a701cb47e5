"""Tracing leans on public APIs only, and its options are declared once.

An OpenTelemetry or grpc release may change anything private without notice, and
opentelemetry-* carry no upper bound here: telemetry/ and bench/ must not import
private names from them, subclass their exporters, or override or assign private
members in classes derived from theirs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Libraries whose private members are off limits.
OTHERS = ("opentelemetry", "grpc", "google")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every use in ``source`` of another library's private members, as "file:line: why"."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    others: set[str] = set()  # names bound to the other libraries' modules and classes

    def flag(node: ast.AST, why: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(OTHERS):
            module = node.module or ""
            if any(_private(part) for part in module.split(".")):
                flag(node, f"imports from the private module {module}")
            for alias in node.names:
                if _private(alias.name):
                    flag(node, f"imports the private {module}.{alias.name}")
                others.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(OTHERS):
                    if any(_private(part) for part in alias.name.split(".")):
                        flag(node, f"imports the private module {alias.name}")
                    others.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            flag(node, f"{node.func.id}() of the private member {node.args[1].value}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [ast.unparse(base) for base in node.bases]
        foreign = [base for base in bases if base.split(".")[0] in others]
        if not foreign:
            continue
        for base in foreign:
            if base.rsplit(".", 1)[-1].endswith("Exporter"):
                flag(node, f"class {node.name} subclasses the exporter {base}")
        for member in ast.walk(node):
            if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef) and _private(member.name):
                flag(member, f"class {node.name} ({', '.join(foreign)}) defines {member.name}")
            targets: list[ast.expr] = []
            if isinstance(member, ast.Assign):
                targets = member.targets
            elif isinstance(member, ast.AnnAssign | ast.AugAssign):
                targets = [member.target]
            for target in targets:
                name = target.attr if isinstance(target, ast.Attribute) else None
                if isinstance(target, ast.Name):
                    name = target.id
                if name is not None and _private(name):
                    flag(member, f"class {node.name} ({', '.join(foreign)}) sets {name}")
    return found


def _sources() -> list[Path]:
    return sorted([*(ROOT / "telemetry").rglob("*.py"), *(ROOT / "bench").rglob("*.py")])


def test_telemetry_and_bench_use_no_private_member_of_opentelemetry_or_grpc() -> None:
    sources = _sources()
    assert ROOT / "telemetry" / "otlp_transport.py" in sources
    found = [use for path in sources for use in private_uses(path.read_text(), str(path))]
    assert found == []


def test_the_check_catches_an_exporter_patched_through_its_private_members() -> None:
    """What the OTLP export once did: subclass the SDK's exporter, override its data
    hooks, swap its stub and client, import its private encoder helpers."""
    patched = """
from opentelemetry.exporter.otlp.proto.common._internal import _encode_attributes
from opentelemetry.sdk import trace as sdk_trace


def record_exporter(encoder):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class RecordSpanExporter(OTLPSpanExporter):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.sends_bytes = hasattr(self, "_stub")
            self._client = object()

        def _translate_data(self, data):
            return encoder.serialized(data)

    return RecordSpanExporter()


class Tracer(sdk_trace.Tracer):
    _cache = {}
"""
    found = "\n".join(private_uses(patched))
    for why in (
        "private module opentelemetry.exporter.otlp.proto.common._internal",
        "imports the private opentelemetry.exporter.otlp.proto.common._internal._encode_attributes",
        "subclasses the exporter OTLPSpanExporter",
        "hasattr() of the private member _stub",
        "sets _client",
        "defines _translate_data",
        "class Tracer (sdk_trace.Tracer) sets _cache",
    ):
        assert why in found
    # Its own classes and private names are its business.
    assert private_uses("class _Mine:\n    def _helper(self):\n        self._x = 1\n") == []


def test_trace_options_are_declared_once_and_cheap_to_import() -> None:
    from batchwire.server import cli, settings
    from batchwire.telemetry import trace_config

    assert cli.TraceMode is trace_config.TraceMode
    assert cli.TraceExporter is trace_config.TraceExporter
    with pytest.raises(ValueError, match="trace exporter must be one of otlp-grpc, otlp-http"):
        settings.ServerSettings(trace_exporter="zipkin")
    with pytest.raises(ValueError, match="trace mode must be one of off, ratio, always"):
        settings.ServerSettings(trace_mode="sometimes")
    # The command line imports the declaration for --help: it must load no library.
    program = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import batchwire.telemetry.trace_config\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert "batchwire.telemetry.trace_config" in loaded
    heavy = ("opentelemetry", "grpc", "google", "numpy", "torch", "prometheus_client")
    assert [name for name in loaded if name.startswith(heavy)] == []
    assert [name for name in loaded if name.startswith("batchwire.telemetry.")] == [
        "batchwire.telemetry.trace_config"
    ]
