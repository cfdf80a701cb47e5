"""Verifying an audit log: an intact log passes; each kind of tampering is named where it is."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testsupport import wait_until

from batchwire.telemetry.audit_log import AuditLog
from batchwire.telemetry.audit_records import AuditEvent, key_id
from batchwire.telemetry.audit_verify import (
    Problem,
    load_public_key,
    read_records,
    verify_log,
)

SECOND = 1_000_000_000
T0 = 1_796_686_475 * SECOND  # 2026-12-07T23:34:35Z


def event(
    number: int, model: str = "mlp", version: str = "1", principal: str = "alice"
) -> AuditEvent:
    x = np.full((1, 4), number, dtype=np.float32)
    return AuditEvent(
        received_ns=T0 + number * 60 * SECOND,
        answered_ns=T0 + number * 60 * SECOND + 1000,
        request_id=f"r{number}",
        model=model,
        version=version,
        model_sha256="a" * 64,
        config_sha256="b" * 64,
        principal=principal,
        code="OK",
        message="",
        inputs=(("X", "FP32", x),),
        outputs=(("Y", "FP32", x),),
        batch_id=number,
        queue_ns=1000,
        compute_ns=2000,
    )


def write_log(directory: Path, events: list[AuditEvent], **options: Any) -> None:
    async def run() -> None:
        log = AuditLog(directory, **options)
        log.start(asyncio.get_running_loop())
        for item in events:
            assert log.submit(item) is None
        log.close()

    asyncio.run(run())


KEY = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signed log of 12 requests in several files, a checkpoint every 4 records."""
    directory = tmp_path_factory.mktemp("audit") / "log"
    write_log(
        directory,
        [event(n) for n in range(12)],
        signing_key=KEY,
        checkpoint_records=4,
        rotate_bytes=3000,
    )
    return directory


@pytest.fixture()
def log_dir(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the pristine log, to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "log"))


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit-*.jsonl"))


def edit_lines(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    """Rewrite ``path`` with ``change`` applied to its lines (newlines kept)."""
    path.write_bytes(b"".join(change(path.read_bytes().splitlines(keepends=True))))


def where(problems: list[Problem]) -> list[tuple[str, int, str]]:
    return [(p.file, p.line, p.kind) for p in problems]


F1, F2, F3 = "audit-000001.jsonl", "audit-000002.jsonl", "audit-000003.jsonl"


def test_the_pristine_log_has_the_expected_layout(pristine: Path) -> None:
    # The tampering tests below rely on it: several files, file 1 = open, 3 requests, a
    # checkpoint (the 4th record), ...
    assert len(files(pristine)) >= 3
    kinds = [json.loads(line)["type"] for line in (pristine / F1).read_bytes().splitlines()]
    assert kinds[:5] == ["open", "request", "request", "request", "checkpoint"]


def test_an_untouched_log_verifies(pristine: Path) -> None:
    all_records = [
        json.loads(line) for path in files(pristine) for line in path.read_bytes().splitlines()
    ]
    checkpoints = sum(1 for r in all_records if r["type"] == "checkpoint")
    report = verify_log(pristine, KEY.public_key())
    assert report.problems == []
    assert report.ok
    assert (report.files, report.records, report.requests) == (
        len(files(pristine)),
        len(all_records),
        12,
    )
    assert (report.checkpoints, report.signed, report.unsigned_tail) == (
        checkpoints,
        checkpoints,
        0,
    )
    assert report.signatures_checked
    unchecked = verify_log(pristine)
    assert (unchecked.ok, unchecked.signed, unchecked.signatures_checked) == (
        True,
        checkpoints,
        False,
    )


def test_an_edited_field_names_the_edited_line(log_dir: Path) -> None:
    edit_lines(log_dir / F1, lambda ls: [ls[0], ls[1].replace(b'"alice"', b'"mallory"'), *ls[2:]])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F1, 2, "edited")]
    assert "the next record (audit-000001.jsonl:3, seq 3)" in problems[0].detail


def test_a_deleted_line_is_removed(log_dir: Path) -> None:
    edit_lines(log_dir / F1, lambda ls: [*ls[:2], *ls[3:]])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F1, 3, "removed")]
    assert problems[0].detail == "seq 3 is missing before this line (seq 4)"


def test_two_swapped_lines_are_reordered(log_dir: Path) -> None:
    edit_lines(log_dir / F1, lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F1, 2, "reordered")]
    assert problems[0].detail == "seq 3 comes before seq 2 (line 3): lines were moved"


def test_a_repeated_line_is_reordered(log_dir: Path) -> None:
    edit_lines(log_dir / F1, lambda ls: [*ls[:3], ls[1], *ls[3:]])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F1, 4, "reordered")]
    assert problems[0].detail == "seq 2 comes after seq 3: it repeats line 2"


def test_a_cut_last_line_is_truncated(log_dir: Path) -> None:
    newest = files(log_dir)[-1]
    data = newest.read_bytes()
    newest.write_bytes(data[:-10])
    count = data.count(b"\n")
    report = verify_log(log_dir, KEY.public_key())
    assert where(report.problems) == [(newest.name, count, "truncated")]
    assert report.problems[0].detail.startswith("the last line has no newline (")
    assert report.unsigned_tail > 0


def test_a_file_cut_before_its_closing_checkpoint_is_truncated(log_dir: Path) -> None:
    first = log_dir / F1
    count = first.read_bytes().count(b"\n")
    last_seq = json.loads(first.read_bytes().splitlines()[-1])["seq"]
    edit_lines(first, lambda ls: ls[:-1])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F1, count - 1, "truncated")]
    assert problems[0].detail.endswith(f"records were cut off its end; seq {last_seq} is missing")


def test_a_deleted_middle_file_is_a_gap(log_dir: Path) -> None:
    (log_dir / F2).unlink()
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F3, 1, "gap")]
    assert problems[0].detail == "files are missing before it: audit-000002.jsonl"


def test_a_deleted_first_file_is_a_gap_without_a_retention_record(log_dir: Path) -> None:
    (log_dir / F1).unlink()
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F2, 1, "gap")]
    assert "no retention record accounts for the files before it" in problems[0].detail


def test_a_corrupted_signature_is_invalid(log_dir: Path) -> None:
    def corrupt(line: bytes) -> bytes:
        record = json.loads(line)
        signature = record["signature"]
        record["signature"] = ("A" if signature[0] != "A" else "B") + signature[1:]
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    # The log's last line (its closing checkpoint): nothing after it chains to it.
    newest = files(log_dir)[-1]
    count = newest.read_bytes().count(b"\n")
    edit_lines(newest, lambda ls: [*ls[:-1], corrupt(ls[-1])])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(newest.name, count, "signature invalid")]
    assert problems[0].detail.startswith("the signature does not verify for seq ")
    # A checkpoint inside the log: its signature, and the next line's prev, both tell
    # (the next line is the next file's open record: a line of another file).
    edit_lines(log_dir / F1, lambda ls: [*ls[:4], corrupt(ls[4]), *ls[5:]])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems)[:2] == [(F1, 5, "signature invalid"), (F2, 1, "gap")]
    assert problems[1].detail.startswith("the open record's prev ")
    assert "is not the hash" in problems[1].detail
    assert "of the last line of audit-000001.jsonl (line 5)" in problems[1].detail
    # Without a key only the chain is checked.
    assert where(verify_log(log_dir).problems) == [(F2, 1, "gap")]


def test_another_key_finds_every_signature_invalid(pristine: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_log(pristine, other)
    assert len(report.problems) == report.checkpoints > 0
    assert {p.kind for p in report.problems} == {"signature invalid"}
    assert report.problems[0].detail == (
        f"signed by key {key_id(KEY.public_key())}, the given public key is {key_id(other)}"
    )


def test_an_unsigned_log_is_unsigned_for_a_key(tmp_path: Path) -> None:
    write_log(tmp_path, [event(0), event(1)])
    assert verify_log(tmp_path).ok
    report = verify_log(tmp_path, KEY.public_key())
    assert where(report.problems) == [(F1, 4, "unsigned")]
    assert (report.checkpoints, report.signed) == (1, 0)


def test_malformed_lines(log_dir: Path) -> None:
    edit_lines(log_dir / F1, lambda ls: [ls[0], b"{not json\n", *ls[2:]])

    def without_code(line: bytes) -> bytes:
        record = json.loads(line)
        del record["code"]
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    edit_lines(log_dir / F2, lambda ls: [ls[0], without_code(ls[1]), *ls[2:]])
    problems = verify_log(log_dir, KEY.public_key()).problems
    assert where(problems) == [(F1, 2, "malformed"), (F2, 2, "malformed")]
    assert problems[0].detail.startswith("not JSON (")
    assert problems[1].detail == "the request record lacks code"


def test_an_empty_directory_has_no_log(tmp_path: Path) -> None:
    problems = verify_log(tmp_path).problems
    assert problems == [Problem("", 0, "removed", "no audit-NNNNNN.jsonl file in the directory")]
    assert str(problems[0]) == ":0: removed: no audit-NNNNNN.jsonl file in the directory"


def test_load_public_key(tmp_path: Path) -> None:
    public = tmp_path / "public.pem"
    public.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert key_id(load_public_key(public)) == key_id(KEY.public_key())
    private = tmp_path / "private.pem"
    private.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert key_id(load_public_key(private)) == key_id(KEY.public_key())
    other = tmp_path / "rsa.pem"
    other.write_bytes(
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError, match=r"rsa.pem: holds an RSA public key \(2048 bits\)"):
        load_public_key(other)
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ValueError, match=r"text: not a PEM file; expected an Ed25519 public key"):
        load_public_key(tmp_path / "text")
    with pytest.raises(ValueError, match=r"cannot read the public key .*missing"):
        load_public_key(tmp_path / "missing")


def test_read_records_filters_by_model_version_principal_and_time(tmp_path: Path) -> None:
    write_log(
        tmp_path,
        [
            event(0),
            event(1, model="text"),
            event(2, version="2"),
            event(3, principal="bob"),
            event(4),
        ],
        rotate_bytes=1500,
    )
    assert len(files(tmp_path)) >= 2

    def ids(**filters: Any) -> list[str]:
        return [r["request_id"] for r in read_records(tmp_path, **filters)]

    assert ids() == ["r0", "r1", "r2", "r3", "r4"]
    assert ids(model="mlp") == ["r0", "r2", "r3", "r4"]
    assert ids(model="mlp", version="1") == ["r0", "r3", "r4"]
    assert ids(principal="bob") == ["r3"]
    utc = timezone.utc
    # r<n> was received n minutes after 23:34:35; since is inclusive, until exclusive.
    assert ids(since=datetime(2026, 12, 7, 23, 36, 35, tzinfo=utc)) == ["r2", "r3", "r4"]
    assert ids(until=datetime(2026, 12, 7, 23, 36, 35)) == ["r0", "r1"]  # naive: UTC
    assert ids(
        since=datetime(2026, 12, 7, 23, 35, 35, tzinfo=utc),
        until=datetime(2026, 12, 7, 23, 38, 35, tzinfo=utc),
        model="mlp",
    ) == ["r2", "r3"]
    record = next(read_records(tmp_path, principal="bob"))
    assert (record["model"], record["version"], record["received"]) == (
        "mlp",
        "1",
        "2026-12-07T23:37:35.000000Z",
    )


def test_retention_accounts_for_the_files_it_removed(tmp_path: Path) -> None:
    now = [T0]

    async def run() -> None:
        log = AuditLog(tmp_path, rotate_seconds=10, retention_seconds=100, clock=lambda: now[0])
        log.start(asyncio.get_running_loop())
        for number, advance in ((0, 0), (1, 20), (2, 200)):
            now[0] += advance * SECOND
            assert log.submit(event(number)) is None
            await asyncio.to_thread(
                wait_until,
                lambda: log.written == number + 1,  # noqa: B023 (called before the loop goes on)
                f"record {number}",
            )
        log.close()

    asyncio.run(run())
    assert [p.name for p in files(tmp_path)] == [F2, F3]
    assert verify_log(tmp_path).problems == []

    def forge(line: bytes) -> bytes:
        record = json.loads(line)
        record["last_removed_hash"] = "0" * 64
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    edit_lines(tmp_path / F3, lambda ls: [ls[0], forge(ls[1]), *ls[2:]])
    problems = verify_log(tmp_path).problems
    assert where(problems) == [(F3, 2, "edited"), (F2, 1, "gap")]
    assert problems[1].detail.startswith(
        "the retention record at audit-000003.jsonl:2 says audit-000001.jsonl ended with hash "
        "0000000000000000..., the open record's prev is "
    )
