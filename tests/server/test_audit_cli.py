"""``batchwire audit verify`` and ``batchwire audit show``: output and exit status."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testsupport import REPO_ROOT
from typer.testing import CliRunner, Result

from batchwire.server.audit_cli import audit_app
from batchwire.telemetry.audit_log import AuditLog
from batchwire.telemetry.audit_records import AuditEvent

SECOND = 1_000_000_000
T0 = 1_796_686_475 * SECOND  # 2026-12-07T23:34:35Z
KEY = Ed25519PrivateKey.generate()


def event(number: int, model: str, version: str, principal: str, code: str = "OK") -> AuditEvent:
    x = np.zeros((1, 2), dtype=np.float32)
    return AuditEvent(
        received_ns=T0 + number * 60 * SECOND,
        answered_ns=T0 + number * 60 * SECOND + 1000,
        request_id=f"r{number}",
        model=model,
        version=version,
        model_sha256="",
        config_sha256="",
        principal=principal,
        code=code,
        message="" if code == "OK" else "bad input",
        inputs=(("X", "FP32", x),),
        outputs=(),
        batch_id=None,
        queue_ns=0,
        compute_ns=0,
    )


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("audit") / "log"

    async def run() -> None:
        log = AuditLog(directory, signing_key=KEY)
        log.start(asyncio.get_running_loop())
        for item in (
            event(0, "mlp", "1", "alice"),
            event(1, "text", "2", "bob", code="INVALID_ARGUMENT"),
            event(2, "mlp", "2", ""),
        ):
            assert log.submit(item) is None
        log.close()

    asyncio.run(run())
    return directory


def public_pem(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(audit_app, list(args))


SUMMARY = "1 files, 5 records (3 requests), 1 checkpoints, 1 signed"


def test_verify_an_intact_log(audit_dir: Path, tmp_path: Path) -> None:
    result = invoke("verify", str(audit_dir))
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == (
        f"OK: {SUMMARY} (not checked: no --public-key); 0 records after the last checkpoint\n"
    )
    key = public_pem(tmp_path / "public.pem", KEY)
    result = invoke("verify", str(audit_dir), "--public-key", str(key))
    assert (result.exit_code, result.stdout) == (
        0,
        f"OK: {SUMMARY} (verified); 0 records after the last checkpoint\n",
    )


def test_verify_names_each_problem_and_exits_1(audit_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(audit_dir, tmp_path / "log"))
    path = copy / "audit-000001.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"alice"', b'"mallory"')
    path.write_bytes(b"".join(lines))
    result = invoke("verify", str(copy))
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith(f"{path}:2: edited: the line was changed")
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.startswith("FAILED: 1 problems; 1 files, 5 records (3 requests)")
    other = public_pem(tmp_path / "other.pem", Ed25519PrivateKey.generate())
    result = invoke("verify", str(audit_dir), "--public-key", str(other))
    assert result.exit_code == 1
    assert result.stdout.startswith(
        f"{audit_dir / 'audit-000001.jsonl'}:5: signature invalid: signed by key "
    )


def test_verify_refuses_unusable_arguments_with_exit_2(audit_dir: Path, tmp_path: Path) -> None:
    result = invoke("verify", str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert f"expected an audit log directory, got {tmp_path / 'missing'}, which does not exist" in (
        result.stderr
    )
    (tmp_path / "key.pem").write_text("not a key")
    result = invoke("verify", str(audit_dir), "--public-key", str(tmp_path / "key.pem"))
    assert result.exit_code == 2
    assert "--public-key" in result.stderr
    assert "not a PEM file; expected an Ed25519 public key" in result.stderr


def test_show_filters_as_a_table_or_json(audit_dir: Path) -> None:
    result = invoke("show", str(audit_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "RECEIVED                    MODEL            VERSION PRINCIPAL    CODE               ID",
        "2026-12-07T23:34:35.000000Z mlp              1       alice        OK                 r0",
        "2026-12-07T23:35:35.000000Z text             2       bob          INVALID_ARGUMENT   r1",
        "2026-12-07T23:36:35.000000Z mlp              2       -            OK                 r2",
    ]
    result = invoke("show", str(audit_dir), "--model", "mlp", "--format", "json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["request_id"], r["version"]) for r in records] == [("r0", "1"), ("r2", "2")]
    assert records[0]["inputs"][0]["shape"] == [1, 2]
    filtered = invoke(
        "show",
        str(audit_dir),
        "--version",
        "2",
        "--since",
        "2026-12-07T23:35:35Z",
        "--format",
        "json",
    )
    assert [json.loads(line)["request_id"] for line in filtered.stdout.splitlines()] == ["r1", "r2"]
    until = invoke(
        "show", str(audit_dir), "--until", "2026-12-08T01:35:35+02:00", "--format", "json"
    )
    assert [json.loads(line)["request_id"] for line in until.stdout.splitlines()] == ["r0"]
    bob = invoke("show", str(audit_dir), "--principal", "bob", "--format", "json")
    assert [json.loads(line)["code"] for line in bob.stdout.splitlines()] == ["INVALID_ARGUMENT"]


def test_show_refuses_unusable_arguments_with_exit_2(audit_dir: Path) -> None:
    result = invoke("show", str(audit_dir), "--since", "yesterday")
    assert result.exit_code == 2
    assert "--since" in result.stderr and "got 'yesterday'" in result.stderr
    result = invoke("show", str(audit_dir), "--format", "xml")
    assert result.exit_code == 2
    assert "expected one of table, json, got 'xml'" in result.stderr


def test_the_commands_run_without_torch(audit_dir: Path) -> None:
    script = (
        "import sys\n"
        "from batchwire.server.audit_cli import audit_app\n"
        "try:\n"
        "    audit_app(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'\n"
        "    raise\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, "verify", str(audit_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("OK: 1 files")


def test_batchwire_audit_is_registered(audit_dir: Path) -> None:
    from batchwire.server.cli import app

    names = [group.name for group in app.registered_groups]
    if "audit" not in names:
        pytest.skip("server/cli.py does not register audit_app yet")
    completed = subprocess.run(
        [sys.executable, "-m", "batchwire", "audit", "verify", str(audit_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("OK: 1 files, 5 records (3 requests)")
