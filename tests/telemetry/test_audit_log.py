"""The audit log writer: chain, checkpoints, rotation, retention, restart, full queue, write errors."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from testsupport import REPO_ROOT, require_component, wait_until

from batchwire.telemetry.audit_log import AuditLog, AuditLogError, load_signing_key
from batchwire.telemetry.audit_records import (
    GENESIS,
    AuditEvent,
    checkpoint_message,
    key_id,
)
from batchwire.telemetry.audit_verify import verify_log

SECOND = 1_000_000_000
#: A fixed wall clock start for the tests that drive the clock (2026-12-07T23:34:35Z).
T0 = 1_796_686_475 * SECOND


def event(number: int, model: str = "mlp") -> AuditEvent:
    x = np.full((1, 4), number, dtype=np.float32)
    return AuditEvent(
        received_ns=T0 + number * 1000,
        answered_ns=T0 + number * 1000 + 500,
        request_id=f"r{number}",
        model=model,
        version="1",
        model_sha256="a" * 64,
        config_sha256="b" * 64,
        principal="alice",
        code="OK",
        message="",
        inputs=(("X", "FP32", x),),
        outputs=(("Y", "FP32", x * 2),),
        batch_id=number,
        queue_ns=1000,
        compute_ns=2000,
    )


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def write_log(directory: Path, events: list[AuditEvent], **options: Any) -> AuditLog:
    """Start a log on ``directory``, submit ``events`` (awaiting when told), close it."""

    async def run() -> AuditLog:
        log = AuditLog(directory, **options)
        log.start(asyncio.get_running_loop())
        for item in events:
            waiting = log.submit(item)
            if waiting is not None:
                await waiting
        log.close()
        return log

    return asyncio.run(run())


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def records(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every record of every file, in order, with its file name."""
    found = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        for line in lines(path):
            found.append((path.name, json.loads(line)))
    return found


def test_records_form_one_chain_closed_by_a_signed_checkpoint(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    log = write_log(tmp_path / "log", [event(n) for n in range(3)], signing_key=key)
    assert (log.written, log.dropped, log.write_errors, log.last_error) == (
        3,
        {"queue_full": 0, "write_error": 0, "closed": 0},
        0,
        "",
    )
    directory = tmp_path / "log"
    assert sorted(os.listdir(directory)) == ["audit-000001.jsonl"]
    assert directory.stat().st_mode & 0o777 == 0o700
    path = directory / "audit-000001.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600
    raw = lines(path)
    assert path.read_bytes().endswith(b"\n")
    parsed = [json.loads(line) for line in raw]
    assert [r["seq"] for r in parsed] == [1, 2, 3, 4, 5]
    assert [r["type"] for r in parsed] == ["open", "request", "request", "request", "checkpoint"]
    assert parsed[0]["prev"] == GENESIS
    for before, after in zip(raw, parsed[1:], strict=False):
        assert after["prev"] == hashlib.sha256(before).hexdigest()
    opening = parsed[0]
    assert (opening["reason"], opening["file"], opening["previous_file"]) == (
        "new",
        "audit-000001.jsonl",
        None,
    )
    assert opening["previous_end"] is None
    assert [r["request_id"] for r in parsed[1:4]] == ["r0", "r1", "r2"]
    assert (
        parsed[2]["inputs"][0]["sha256"]
        == hashlib.sha256(np.full(4, 1, "<f4").tobytes()).hexdigest()
    )
    assert "payload" not in parsed[2]["inputs"][0]
    checkpoint = parsed[4]
    assert checkpoint["reason"] == "close"
    assert checkpoint["key_id"] == key_id(key.public_key())
    key.public_key().verify(
        base64.b64decode(checkpoint["signature"]), checkpoint_message(5, checkpoint["prev"])
    )
    report = verify_log(directory, key.public_key())
    assert (report.ok, report.records, report.requests, report.checkpoints, report.signed) == (
        True,
        5,
        3,
        1,
        1,
    )
    assert report.unsigned_tail == 0


def test_payloads_and_redaction(tmp_path: Path) -> None:
    item = event(4)
    item.redact = frozenset({"Y"})
    write_log(tmp_path, [item], payloads=True)
    request = records(tmp_path)[1][1]
    assert base64.b64decode(request["inputs"][0]["payload"]) == np.full(4, 4, "<f4").tobytes()
    assert request["outputs"][0]["payload"] is None and request["outputs"][0]["redacted"] is True


def test_a_checkpoint_every_n_records_and_after_an_interval(tmp_path: Path) -> None:
    write_log(tmp_path / "n", [event(n) for n in range(7)], checkpoint_records=3)
    kinds = [(r["type"], r.get("reason")) for _, r in records(tmp_path / "n")]
    # The open record counts: a checkpoint follows every 3 records it does not cover.
    assert kinds == [
        ("open", "new"),
        ("request", None),
        ("request", None),
        ("checkpoint", "records"),
        ("request", None),
        ("request", None),
        ("request", None),
        ("checkpoint", "records"),
        ("request", None),
        ("request", None),
        ("checkpoint", "close"),
    ]

    async def interval() -> None:
        log = AuditLog(tmp_path / "t", checkpoint_seconds=0.05)
        log.start(asyncio.get_running_loop())
        log.submit(event(1))
        path = tmp_path / "t" / "audit-000001.jsonl"
        wait_until(lambda: path.read_bytes().count(b"\n") == 3, "the interval checkpoint")
        log.close()

    asyncio.run(interval())
    kinds = [(r["type"], r.get("reason")) for _, r in records(tmp_path / "t")]
    assert kinds == [("open", "new"), ("request", None), ("checkpoint", "interval")]


def check_files_chain(directory: Path) -> list[dict[str, Any]]:
    """Each file after the first opens on the hash of the last line of the one before."""
    paths = sorted(directory.glob("audit-*.jsonl"))
    openings = []
    for before, after in itertools.pairwise(paths):
        last = json.loads(lines(before)[-1])
        assert (last["type"], last["reason"]) == ("checkpoint", "rotate"), before.name
        opening = json.loads(lines(after)[0])
        assert opening["type"] == "open"
        assert opening["file"] == after.name
        assert opening["previous_file"] == before.name
        assert opening["previous_end"] == "clean"
        assert opening["prev"] == hashlib.sha256(lines(before)[-1]).hexdigest()
        assert opening["seq"] == last["seq"] + 1
        openings.append(opening)
    return openings


def test_rotation_by_size_keeps_the_chain(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    log = write_log(tmp_path, [event(n) for n in range(12)], signing_key=key, rotate_bytes=2500)
    assert log.written == 12
    paths = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(paths) >= 3
    for path in paths[:-1]:
        assert path.stat().st_size <= 2500 + 400  # the closing checkpoint may pass the limit
    openings = check_files_chain(tmp_path)
    assert {o["reason"] for o in openings} == {"rotate"}
    requests = [r["request_id"] for _, r in records(tmp_path) if r["type"] == "request"]
    assert requests == [f"r{n}" for n in range(12)]
    assert verify_log(tmp_path, key.public_key()).problems == []


def test_rotation_by_time_keeps_the_chain(tmp_path: Path) -> None:
    clock = Clock()

    async def run() -> None:
        log = AuditLog(tmp_path, rotate_seconds=3600, clock=clock)
        log.start(asyncio.get_running_loop())
        for number, advance in ((0, 0), (1, 10), (2, 3600), (3, 10), (4, 7200)):
            clock.now += advance * SECOND
            log.submit(event(number))
            wait_until(lambda: log.written == number + 1, f"record {number}")  # noqa: B023
        log.close()

    asyncio.run(run())
    by_file: dict[str, list[str]] = {}
    for name, record in records(tmp_path):
        if record["type"] == "request":
            by_file.setdefault(name, []).append(record["request_id"])
    assert by_file == {
        "audit-000001.jsonl": ["r0", "r1"],
        "audit-000002.jsonl": ["r2", "r3"],
        "audit-000003.jsonl": ["r4"],
    }
    opening = check_files_chain(tmp_path)[0]
    assert opening["time"] == "2026-12-08T00:34:45.000000Z"  # T0 + 3610 s
    assert verify_log(tmp_path).ok


def test_retention_removes_old_files_and_the_log_still_verifies(tmp_path: Path) -> None:
    clock = Clock()
    key = Ed25519PrivateKey.generate()

    async def run() -> None:
        log = AuditLog(
            tmp_path,
            signing_key=key,
            rotate_seconds=10,
            retention_seconds=100,
            clock=clock,
        )
        log.start(asyncio.get_running_loop())
        for number, advance in ((0, 0), (1, 20), (2, 200)):
            clock.now += advance * SECOND
            log.submit(event(number))
            wait_until(lambda: log.written == number + 1, f"record {number}")  # noqa: B023
        log.close()

    asyncio.run(run())
    # File 1 ended at T0+20 (older than T0+220-100); file 2 ended at T0+220: kept.
    assert sorted(os.listdir(tmp_path)) == ["audit-000002.jsonl", "audit-000003.jsonl"]
    third = [json.loads(line) for line in lines(tmp_path / "audit-000003.jsonl")]
    assert [r["type"] for r in third] == ["open", "retention", "request", "checkpoint"]
    retention = third[1]
    second_open = json.loads(lines(tmp_path / "audit-000002.jsonl")[0])
    assert retention["removed"] == ["audit-000001.jsonl"]
    assert retention["last_removed_hash"] == second_open["prev"]
    assert retention["time"] == "2026-12-07T23:38:15.000000Z"
    report = verify_log(tmp_path, key.public_key())
    assert report.problems == []
    assert report.requests == 2


def test_a_restart_continues_the_chain_in_a_new_file(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    write_log(tmp_path, [event(0), event(1)], signing_key=key)
    first_last = lines(tmp_path / "audit-000001.jsonl")[-1]
    write_log(tmp_path, [event(2)], signing_key=key)
    opening = json.loads(lines(tmp_path / "audit-000002.jsonl")[0])
    assert opening == {
        "seq": json.loads(first_last)["seq"] + 1,
        "type": "open",
        "time": opening["time"],
        "reason": "restart",
        "file": "audit-000002.jsonl",
        "previous_file": "audit-000001.jsonl",
        "previous_end": "clean",
        "prev": hashlib.sha256(first_last).hexdigest(),
    }
    assert verify_log(tmp_path, key.public_key()).problems == []


def test_a_restart_after_a_crash_names_how_the_last_file_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_log(tmp_path, [event(0), event(1)])
    first = tmp_path / "audit-000001.jsonl"
    # A crash before the closing checkpoint: drop it.
    first.write_bytes(b"\n".join(lines(first)[:-1]) + b"\n")
    with caplog.at_level(logging.WARNING, "batchwire.telemetry.audit_log"):
        write_log(tmp_path, [event(2)])
    assert "audit-000001.jsonl ends without its closing checkpoint" in caplog.text
    second = tmp_path / "audit-000002.jsonl"
    assert json.loads(lines(second)[0])["previous_end"] == "unclean"
    # A crash in the middle of a line: the file ends torn.
    with second.open("ab") as stream:
        stream.write(b'{"seq":99,"type":"requ')
    caplog.clear()
    with caplog.at_level(logging.WARNING, "batchwire.telemetry.audit_log"):
        write_log(tmp_path, [event(3)])
    assert "audit-000002.jsonl ends with a partial line" in caplog.text
    opening = json.loads(lines(tmp_path / "audit-000003.jsonl")[0])
    last_complete = lines(second)[-2]
    assert opening["previous_end"] == "torn"
    assert opening["prev"] == hashlib.sha256(last_complete).hexdigest()
    assert opening["seq"] == json.loads(last_complete)["seq"] + 1
    # An empty newest file (a crash right after creating it) is removed.
    (tmp_path / "audit-000004.jsonl").touch()
    write_log(tmp_path, [event(4)])
    assert sorted(os.listdir(tmp_path))[-1] == "audit-000004.jsonl"
    assert json.loads(lines(tmp_path / "audit-000004.jsonl")[0])["previous_file"] == (
        "audit-000003.jsonl"
    )
    report = verify_log(tmp_path)
    assert (report.problems, report.requests) == ([], 5)


def test_start_refuses_what_it_cannot_use(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(
            AuditLogError,
            match=r"cannot create the audit log directory .*file/log: Not a directory \(ENOTDIR\)",
        ):
            AuditLog(blocker / "log").start(loop)
        with pytest.raises(AuditLogError, match=r"audit log .*file: not a directory"):
            AuditLog(blocker).start(loop)
        first = AuditLog(tmp_path / "log")
        first.start(loop)
        with pytest.raises(AuditLogError, match=r"another process is writing to this directory"):
            AuditLog(tmp_path / "log").start(loop)
        first.close()
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "audit-000001.jsonl").write_bytes(b"not a record\n")
        with pytest.raises(
            AuditLogError, match=r"the last complete line of audit-000001.jsonl is not a record"
        ):
            AuditLog(bad).start(loop)
        with pytest.raises(ValueError, match=r"on_full: expected one of block, drop, got 'wait'"):
            AuditLog(tmp_path, on_full="wait")
    finally:
        loop.close()


def test_a_full_queue_drops_under_policy_drop(tmp_path: Path) -> None:
    async def run() -> AuditLog:
        log = AuditLog(tmp_path, queue_size=2, on_full="drop")
        log.start(asyncio.get_running_loop())
        log.pause()
        assert [log.submit(event(n)) for n in range(4)] == [None] * 4
        assert (log.depth, log.dropped["queue_full"]) == (2, 2)
        log.resume()
        log.close()
        return log

    log = asyncio.run(run())
    assert (log.written, log.depth, log.dropped["queue_full"]) == (2, 0, 2)
    requests = [r["request_id"] for _, r in records(tmp_path) if r["type"] == "request"]
    assert requests == ["r0", "r1"]


async def test_a_full_queue_makes_requests_wait_under_policy_block(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, queue_size=2, on_full="block")
    log.start(asyncio.get_running_loop())
    log.pause()
    assert log.submit(event(0)) is None and log.submit(event(1)) is None
    third, fourth = log.submit(event(2)), log.submit(event(3))
    assert third is not None and fourth is not None
    await asyncio.sleep(0)
    assert (log.depth, log.waiting, log.dropped["queue_full"]) == (2, 2, 0)
    log.resume()
    await asyncio.wait_for(asyncio.gather(third, fourth), 10)
    await asyncio.to_thread(log.close)
    assert (log.written, log.depth, log.waiting) == (4, 0, 0)
    requests = [r["request_id"] for _, r in records(tmp_path) if r["type"] == "request"]
    assert requests == ["r0", "r1", "r2", "r3"]
    assert log.submit(event(4)) is None
    assert log.dropped["closed"] == 1


async def test_a_removed_directory_makes_requests_wait_under_policy_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "log"
    log = AuditLog(directory, queue_size=2, on_full="block")
    log.start(asyncio.get_running_loop())
    with caplog.at_level(logging.INFO, "batchwire.telemetry.audit_log"):
        log.submit(event(0))
        await asyncio.to_thread(wait_until, lambda: log.written == 1, "the first record")
        shutil.rmtree(directory)
        log.submit(event(1))
        await asyncio.to_thread(wait_until, lambda: log.write_errors >= 2, "two failed attempts")
        assert log.submit(event(2)) is None and log.submit(event(3)) is None
        waiting = log.submit(event(4))
        assert waiting is not None
        assert (log.depth, log.written, log.dropped["write_error"]) == (2, 1, 0)
        assert not waiting.done()  # type: ignore[attr-defined]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # once per failure episode, not per retry
        first_file = directory / "audit-000001.jsonl"
        assert f"cannot write the audit log {first_file}: the file was removed while open " in (
            errors[0].getMessage()
        )
        assert "requests wait until it can be written (policy block)" in errors[0].getMessage()
        # Then the next file cannot be created.
        assert log.last_error == (
            f"cannot write the audit log {directory / 'audit-000002.jsonl'}: "
            "No such file or directory (ENOENT)"
        )
        directory.mkdir()
        await asyncio.wait_for(waiting, 10)
        await asyncio.to_thread(log.close)
    assert (log.written, log.dropped["write_error"]) == (5, 0)
    assert "writing to" in caplog.text and "works again" in caplog.text
    requests = [r["request_id"] for _, r in records(directory) if r["type"] == "request"]
    assert requests == ["r1", "r2", "r3", "r4"]
    opening = json.loads(lines(directory / "audit-000002.jsonl")[0])
    assert (opening["reason"], opening["previous_file"]) == ("recover", "audit-000001.jsonl")
    # The first file went with the directory: verify says so, and nothing else.
    problems = verify_log(directory).problems
    assert [(p.file, p.line, p.kind) for p in problems] == [("audit-000002.jsonl", 1, "gap")]


async def test_a_removed_directory_drops_records_under_policy_drop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "log"
    log = AuditLog(directory, on_full="drop")
    log.start(asyncio.get_running_loop())
    with caplog.at_level(logging.INFO, "batchwire.telemetry.audit_log"):
        log.submit(event(0))
        await asyncio.to_thread(wait_until, lambda: log.written == 1, "the first record")
        shutil.rmtree(directory)
        for number in (1, 2, 3):
            assert log.submit(event(number)) is None
        await asyncio.to_thread(
            wait_until, lambda: log.dropped["write_error"] == 3, "three dropped records"
        )
        assert log.write_errors >= 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "records are dropped and counted until it can be written (policy drop)" in (
            errors[0].getMessage()
        )
        directory.mkdir()
        log.submit(event(4))
        await asyncio.to_thread(wait_until, lambda: log.written == 2, "the record after")
        await asyncio.to_thread(log.close)
    assert (log.written, log.dropped["write_error"], log.dropped["queue_full"]) == (2, 3, 0)
    assert "works again" in caplog.text
    requests = [r["request_id"] for _, r in records(directory) if r["type"] == "request"]
    assert requests == ["r4"]


async def test_close_gives_up_on_records_it_cannot_write(tmp_path: Path) -> None:
    directory = tmp_path / "log"
    log = AuditLog(directory, on_full="block")
    log.start(asyncio.get_running_loop())
    shutil.rmtree(directory)
    log.submit(event(0))
    log.submit(event(1))
    await asyncio.to_thread(wait_until, lambda: log.write_errors >= 1, "a failed attempt")
    await asyncio.to_thread(log.close, 0.3)
    assert (log.written, log.dropped["write_error"]) == (0, 2)


#: Run in a child process: a file size limit makes writes fail with EFBIG, a real error
#: (the writer cannot tell it from a full disk), after a partial write.
FSIZE_CHILD = textwrap.dedent(
    """
    import asyncio, json, logging, resource, signal, sys
    from pathlib import Path
    import numpy as np
    from batchwire.telemetry.audit_log import AuditLog
    from batchwire.telemetry.audit_records import AuditEvent

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    directory, policy, limit, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), 20

    def event(n):
        x = np.full((1, 8), n, dtype=np.float32)
        return AuditEvent(n, n, f"r{n}", "mlp", "1", "", "", "", "OK", "",
                          (("X", "FP32", x),), (("Y", "FP32", x),), n, 0, 0)

    async def main():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        log = AuditLog(directory, on_full=policy)
        log.start(asyncio.get_running_loop())
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        for n in range(count):
            waiting = log.submit(event(n))
            if waiting is not None:
                await waiting
        log.close(30)
        print(json.dumps({"written": log.written, "dropped": log.dropped,
                          "write_errors": log.write_errors, "last_error": log.last_error}))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_a_file_size_limit_is_a_write_error_that_never_breaks_the_chain(
    tmp_path: Path, policy: str
) -> None:
    directory = tmp_path / "log"
    limit = 3000
    completed = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(directory), policy, str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    counters = json.loads(completed.stdout)
    assert counters["write_errors"] >= 1
    assert "File too large (EFBIG)" in counters["last_error"]
    errors = [line for line in completed.stderr.splitlines() if line.startswith("ERROR")]
    assert errors and all("File too large (EFBIG)" in line for line in errors)
    if policy == "block":
        assert (counters["written"], counters["dropped"]["write_error"]) == (20, 0)
    else:
        assert counters["dropped"]["write_error"] >= 1
        assert counters["written"] + counters["dropped"]["write_error"] == 20
    paths = sorted(directory.glob("audit-*.jsonl"))
    assert len(paths) >= 2
    assert all(path.stat().st_size <= limit for path in paths)
    # The limit cut a line: the file after it opens saying so, and the chain holds.
    torn = [p for p in paths[:-1] if not p.read_bytes().endswith(b"\n")]
    assert torn
    for path in torn:
        after = directory / f"audit-{int(path.name[6:12]) + 1:06d}.jsonl"
        opening = json.loads(lines(after)[0])
        assert (opening["reason"], opening["previous_end"]) == ("recover", "torn")
    report = verify_log(directory)
    assert report.problems == []
    assert report.requests == counters["written"]


def private_pem(key: Any, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return pem


def test_load_signing_key_reads_ed25519_pem_and_names_what_else_it_finds(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "key.pem"
    path.write_bytes(private_pem(key))
    assert key_id(load_signing_key(path).public_key()) == key_id(key.public_key())
    cases: list[tuple[bytes | None, str]] = [
        (None, r"cannot read the audit signing key .*missing.pem: No such file or directory"),
        (b"hello", r"not a PEM file"),
        (
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            r"holds a public key or certificate",
        ),
        (private_pem(key, b"secret"), r"the key is encrypted"),
        (
            private_pem(rsa.generate_private_key(65537, 2048)),
            r"holds an RSA private key \(2048 bits\);",
        ),
        (
            private_pem(ec.generate_private_key(ec.SECP256R1())),
            r"holds an EC private key \(secp256r1\);",
        ),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", r"not a readable"),
    ]
    for index, (content, message) in enumerate(cases):
        target = tmp_path / ("missing.pem" if content is None else f"key{index}.pem")
        if content is not None:
            target.write_bytes(content)
        with pytest.raises(AuditLogError, match=message) as raised:
            load_signing_key(target)
        assert str(target) in str(raised.value)
        assert "expected an unencrypted Ed25519 private key" in str(raised.value) or content is None


def test_load_signing_key_reads_what_openssl_genpkey_writes(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    require_component(openssl is not None, "openssl is not installed")
    assert openssl is not None
    path = tmp_path / "key.pem"
    subprocess.run(
        [openssl, "genpkey", "-algorithm", "ed25519", "-out", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    key = load_signing_key(path)
    write_log(tmp_path / "log", [event(0)], signing_key=key)
    public = tmp_path / "public.pem"
    subprocess.run(
        [openssl, "pkey", "-in", str(path), "-pubout", "-out", str(public)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    from batchwire.telemetry.audit_verify import load_public_key

    report = verify_log(tmp_path / "log", load_public_key(public))
    assert (report.problems, report.signed, report.signatures_checked) == ([], 1, True)
